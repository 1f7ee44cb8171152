"""The Earth domain's sections: survey points with scenes or pre-cut tiles, raster layers, two-stage transfer, maps."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from geocnn.config.common import Strict

EARTH_FORMATS = ("survey", "synthetic_earth")


class EarthData(Strict):
    """Survey points (clusters) and where their pixels come from: windows of scenes, or a tile file per cluster."""

    format: Literal["survey", "synthetic_earth"] = Field(
        "survey", description="survey (points from CSV/Parquet/GeoJSON, pixels from earth.scenes or data.tiles), "
        "synthetic_earth (a generated scene, night lights and survey clusters).")
    catalog: str | None = Field(None, description="Survey file: CSV, Parquet or GeoJSON points (lat/lon columns "
                                "named in the earth section).")
    tiles: str | None = Field(None, description="Pre-cut tiles, one file per cluster (GeoTIFF, .npy or .npz; any "
                              "band count and dtype; georeferenced or not): a catalog column holding each tile's path, "
                              "or a folder where '<id>.tif/.tiff/.npy/.npz' is found. Without it, chips are cut from "
                              "earth.scenes around each point.")
    id_column: str | None = Field(None, description="Unique id column (default: the row number).")
    targets: list[str] = Field(default_factory=list, description="Survey columns to predict (e.g. [wealthpooled]).")
    group_column: str | None = Field(None, description="Group column (e.g. country): grouped splits, per-group "
                                     "metrics; kept under its own name and as 'group'.")
    crop: int | None = Field(None, gt=0, description="Tiles: centre crop in pixels before resizing (default: the "
                             "whole tile).")
    chip_size: int = Field(64, gt=0, description="Side of the stored chip in pixels (resampled from the footprint).")
    store_root: str = Field("data/stores", description="Folder holding chip stores (reused across runs).")
    allow_outside_root: bool = Field(False, description="Let tile paths in the catalog point outside its folder "
                                     "and data.tiles.")


class EarthConfig(Strict):
    """Earth imagery: scenes, extra raster layers, chips around survey points, night-light label rasters."""

    scenes: list[str] = Field(default_factory=list, description="GeoTIFF scenes (several = one mosaic); a path "
                              "containing '{band}' stacks one file per band in the order of 'bands'. Also globs "
                              "('tiles/*.tif'), folders (their *.tif/*.tiff/*.vrt), GDAL VRTs (one raster), STAC "
                              "Item/ItemCollection/Catalog JSON files and STAC API URLs (the 'stac_asset' of each "
                              "item): resolved to the concrete files when the experiment is prepared.")
    scene_sources: list[str] | None = Field(None, description="Set when the experiment is prepared: 'scenes' as "
                                            "configured (globs, folders, STAC), while 'scenes' then lists the "
                                            "concrete files chips are cut from. Leave unset.")
    stac_asset: str | None = Field(None, description="STAC scenes: the asset key read from each item (e.g. "
                                   "'visual', 'data', 'B04').")
    stac_bbox: list[float] | None = Field(None, min_length=4, max_length=4, description="STAC scenes: keep items "
                                          "intersecting [min lon, min lat, max lon, max lat] (EPSG:4326).")
    stac_datetime: str | None = Field(None, description="STAC scenes: keep items in this RFC 3339 instant or "
                                      "interval ('2015-05-02', '2015-01-01/2015-12-31', open end '..').")
    stac_collections: list[str] | None = Field(None, description="STAC API scenes: search these collections.")
    stac_max_items: int | None = Field(None, gt=0, description="STAC API scenes: at most this many items.")
    bands: list[str | int] | None = Field(None, description="Bands to read from scenes and tiles: names (band "
                                          "descriptions or the {band} tokens) or 1-based indices; default all.")
    nodata: float | None = Field(None, description="Nodata value of scenes and tiles (default: from the files).")
    layers: list[str] = Field(default_factory=list, description="Extra single- or multi-band rasters (any grid/CRS) "
                              "appended as bands, read over the same ground box as the chip (e.g. WorldClim).")
    lat_column: str = Field("lat", description="Latitude column (EPSG:4326) of the survey points.")
    lon_column: str = Field("lon", description="Longitude column (EPSG:4326) of the survey points.")
    urban_column: str | None = Field(None, description="Urban/rural column, for the worse-of-urban/rural metric "
                                     "(urban/rural, U/R, 1/0, 1.0/0.0, 1/2 with 2 = rural, true/false).")
    urban_unknown: list[str] = Field(default_factory=lambda: ["unknown"], description="Values of urban_column that "
                                     "mean 'not known' (case-insensitive): kept as 'unknown', left out of the "
                                     "urban/rural metrics.")
    weight_column: str | None = Field(None, description="Survey weight column (kept in the index).")
    chip_m: float | None = Field(None, gt=0, description="Chip footprint in metres (else chip_px).")
    chip_px: int | None = Field(None, gt=0, description="Chip footprint in native pixels of the first scene.")
    max_nodata_fraction: float = Field(0.5, ge=0, le=1, description="Drop chips with more nodata than this "
                                       "(counted in the ingest report).")
    chips_per_cluster: int = Field(1, gt=0, description="n: an n x n grid of chips over 'cluster_box_m' around each "
                                   "point (Jean et al.); features/predictions are averaged per cluster.")
    cluster_box_m: float = Field(10000.0, gt=0, description="Side in metres of the box the chip grid covers.")
    label_raster: str | None = Field(None, description="Label raster (night lights): a per-chip statistic becomes "
                                     "the target 'label_name' (stage 1 of two-stage transfer).")
    label_name: str = Field("nightlights", description="Name of the target computed from label_raster.")
    label_statistic: Literal["mean", "median", "max"] = Field("mean", description="Statistic of the label raster "
                                                               "over the chip footprint.")
    label_classes: Literal["quantiles", "gmm"] | None = Field(None, description="Turn the label statistic into "
                                                               "classes (Jean et al.: 3 night-light classes by GMM).")
    n_label_classes: int = Field(3, ge=2, description="Number of label classes.")
    baseline_raster: str | None = Field(None, description="Night-light raster for the gradient-boosting baseline "
                                        "(mean night light around each cluster at baseline_radii_px).")
    baseline_radii_px: list[int] = Field(default_factory=lambda: [1, 3, 7, 15], description="Window sides in "
                                         "native pixels of baseline_raster for the baseline's features.")
    synthetic_size: int = Field(1024, gt=0, description="synthetic_earth: scene side in pixels.")
    synthetic_clusters: int = Field(300, gt=0, description="synthetic_earth: number of survey clusters.")
    synthetic_seed: int = Field(0, description="synthetic_earth: generator seed.")

    @model_validator(mode="after")
    def _footprint(self) -> "EarthConfig":
        if self.chip_m is not None and self.chip_px is not None:
            raise ValueError("set only one of chip_m (metres) and chip_px (native pixels)")
        return self


class MapsConfig(Strict):
    """Wall-to-wall prediction maps over the first scene (sliding windows, streamed)."""

    enabled: bool | None = Field(None, description="Write a prediction map (GeoTIFF + PNG) of the first scene; "
                                 "default: when earth.scenes are given.")
    stride_px: int | None = Field(None, gt=0, description="Window stride in native scene pixels (default: half "
                                  "the chip footprint; overlaps are averaged).")
    target_grid: str | None = Field(None, description="Write on the grid (CRS, transform, shape) of this raster, "
                                    "e.g. a published map, and predict only the scene area it covers.")
    batch_size: int = Field(128, gt=0, description="Windows per model batch.")
    all_scenes: bool = Field(False, description="Map every scene of earth.scenes, one task each on "
                             "orchestration.task_runner, then mosaic them (VRT + merged COG + per-scene table); "
                             "default: the first scene only.")
    units: str | None = Field(None, description="Units of the mapped target (e.g. 'standard deviations of the "
                              "pooled asset index'): in the colour-bar label and the GeoTIFF tag UNITS.")
    definition: str | None = Field(None, description="One-line definition of the mapped target (e.g. 'first "
                                   "principal component of DHS household assets'): under the quicklook and in "
                                   "the GeoTIFF tag DEFINITION.")
    diverging: bool | None = Field(None, description="Draw the quicklook with a diverging colour map centred at 0 "
                                   "(true) or a sequential one (false); default: diverging when the training "
                                   "target's range spans 0 (centred indices such as an asset index).")
    mask_to_grid: bool = Field(True, description="With target_grid: pixels that are nodata (or NaN) in the grid "
                               "raster are nodata in the map too (no predictions over sea or other countries).")
    html: bool = Field(True, description="Also write prediction.html beside the COG: a self-contained Leaflet map of "
                       "the prediction (and interval width) with the held-out clusters, viewable offline.")
    aggregate_polygons: str | None = Field(None, description="Admin units (GeoJSON, GeoPackage or Shapefile) to "
                                           "aggregate the run's map over: weighted mean prediction and interval, "
                                           "coverage and nodata share per polygon (maps/aggregates.gpkg, .csv, "
                                           ".parquet; `geocnn aggregate` does the same for any map).")
    aggregate_population: str | None = Field(None, description="Population raster on the map's grid: with "
                                             "aggregate_polygons, the means are weighted by people, not area.")


class TwoStageConfig(Strict):
    """Jean et al. 2016: CNN on night lights over many chips, then ridge on cluster-averaged features."""

    enabled: bool = Field(False, description="Run the two-stage model (else the CNN regresses the targets directly).")
    stage1_chips: int = Field(3000, gt=0, description="Chips sampled across the scenes to train stage 1 on the "
                              "label raster (night lights); with tiles and no scenes, the cluster tiles themselves.")
    alphas: list[float] = Field(default_factory=lambda: [10.0 ** k for k in range(-3, 5)],
                                description="Ridge alphas searched inside the training folds.")
    inner_folds: int = Field(4, ge=2, description="Inner grouped CV folds choosing alpha.")
