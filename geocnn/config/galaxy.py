"""The galaxy domain's data section: catalogs of cut-outs (Kaggle, Zoobot, class folders, any CSV) or generated ones."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from geocnn.config.common import Strict

GALAXY_FORMATS = ("kaggle", "zoobot", "folders", "csv", "synthetic", "digits")


class GalaxyData(Strict):
    """Where the galaxy images and labels come from, and how they are cut into chips."""

    format: Literal["kaggle", "zoobot", "folders", "csv", "synthetic", "digits"] = Field(
        "csv", description="Reader: kaggle (GalaxyID + Class1.1..Class11.6), zoobot (GZ DECaLS id_str/iauname + "
        "vote columns), folders (one subfolder per class), csv (any id/file/target columns), synthetic (generated "
        "galaxies), digits (scikit-learn's 1,797 real handwritten digits 0-9, shipped in its wheel: 32x32 PNGs "
        "written beside data.store_root, target 'digit'). Earth formats (survey, synthetic_earth) make an Earth "
        "experiment.")
    catalog: str | None = Field(None, description="Catalog file (CSV/Parquet); not used by 'folders'/'synthetic'.")
    images: str | None = Field(None, description="Image folder; relative file paths in the catalog resolve "
                               "against it (default: the catalog's folder).")
    id_column: str | None = Field(None, description="Id column (default per format: GalaxyID, id_str/iauname, id).")
    file_column: str | None = Field(None, description="Image path column; if absent, images are found by id "
                                    "(<id>.jpg/.png/.fits/.tif/.npy anywhere under 'images').")
    targets: list[str] = Field(default_factory=list, description="Target columns, in output order "
                               "(kaggle: all 37 by default; folders: the class label).")
    group_column: str | None = Field(None, description="Optional group column, kept under its own name and as "
                                     "'group' (grouped splits and per-group metrics).")
    crop: int = Field(207, gt=0, description="Centre crop in pixels before resizing (Dieleman et al.: 207 of 424).")
    chip_size: int = Field(64, gt=0, description="Side of the stored chip in pixels after resizing.")
    channels: Literal["rgb", "gray"] = Field("rgb", description="JPEG/PNG read as 3-band RGB or 1-band grayscale "
                                             "(FITS cubes: gray averages the bands).")
    bands: list[str | int] | None = Field(None, description="Multi-band files (GeoTIFF, FITS cube, .npy/.npz): bands "
                                          "to keep, by name (GeoTIFF band descriptions) or 1-based index; "
                                          "default all.")
    synthetic_count: int = Field(1000, gt=0, description="Number of generated galaxies (format 'synthetic').")
    synthetic_size: int = Field(128, gt=0, description="Side in pixels of generated galaxies (format 'synthetic').")
    synthetic_seed: int = Field(0, description="Seed of the generated galaxies (format 'synthetic'); independent of "
                                "the model seed, so model seeds can vary on the same data.")
    class_names: list[str] | dict[str, str] | str | None = Field(
        None, description="Names of integer class labels, used in metrics, plots and tables: a list in code order "
        "(0, 1, ...), a mapping {code: name}, or a YAML/JSON/CSV file holding one (CSV: code,name columns).")
    store_root: str = Field("data/stores", description="Folder holding chip stores (reused across runs).")
    allow_outside_root: bool = Field(False, description="Let catalog image paths point outside data.images and "
                                     "the catalog's folder (off: a path like ../../x or an absolute path elsewhere "
                                     "is refused).")
