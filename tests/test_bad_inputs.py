"""The bad-input suite: every entry point fed broken data exits 2 with one message naming the culprit and the fix.

Each case builds its inputs under ``in/``, runs the real CLI in-process and checks:
- exit code 2 (a user error), no traceback, a message naming the file/row/column/band/key and what to do;
- nothing written under ``out/`` (no table, map, run state or half-built store; a complete chip store, the
  content-addressed cache of an ingest that succeeded before a later step refused, may stay), no temporary file;
- every input byte unchanged.
One case is also run in a subprocess with ``--debug`` to show the traceback is then printed.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from typer.testing import CliRunner

from geocnn.cli import app
from tests.conftest import write_rgb


@dataclass
class Ctx:
    """Folders of one case: inputs (checked unchanged) and outputs (checked empty)."""

    root: Path
    shared: Path | None

    @property
    def inp(self) -> Path:
        return self.root / "in"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def galaxies(self, n: int = 12, size: int = 32, target: str = "label") -> pd.DataFrame:
        """``n`` small RGB images and a catalog frame (not yet written)."""
        for i in range(n):
            write_rgb(self.inp / "img" / f"g{i}.png", size, seed=i)
        values = [i % 2 for i in range(n)] if target == "label" else [0.1 * i for i in range(n)]
        return pd.DataFrame({"id": [f"g{i}" for i in range(n)], "file": [f"img/g{i}.png" for i in range(n)],
                             target: values})

    def config(self, text: str, name: str = "c.yaml") -> Path:
        """An experiment YAML whose outputs all go under out/."""
        path = self.inp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"name: bad\noutput_dir: {self.out / 'run'}\n{text}")
        return path

    def galaxy_config(self, frame: pd.DataFrame, extra: str = "", targets: str = "[label]",
                      task: str = "classification") -> Path:
        frame.to_csv(self.inp / "cat.csv", index=False)
        return self.config(f"data:\n  catalog: {self.inp / 'cat.csv'}\n  targets: {targets}\n  crop: 32\n"
                           f"  chip_size: 16\n  store_root: {self.out / 'stores'}\nmodel:\n  task: {task}\n"
                           f"  backbone: test_resnet\ntrain:\n  epochs: 1\n{extra}")

    def scene(self, name: str = "scene.tif", bands: int = 3, size: int = 64, crs: str | None = "EPSG:32631",
              fill: float | None = None, nodata: float | None = None) -> Path:
        """A small UTM GeoTIFF near lat 0.45, lon 3.45 (or without CRS/geotransform when crs is None)."""
        path = self.inp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = np.random.default_rng(0).random((bands, size, size)).astype("float32")
        if fill is not None:
            data[:] = fill
        profile = {"driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": "float32",
                   "nodata": nodata}
        if crs is not None:
            profile |= {"crs": crs, "transform": rasterio.transform.from_origin(550_000, 50_000, 30, 30)}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        return path

    def survey(self, rows: list[tuple[float, float, float]], name: str = "survey.csv",
               columns: tuple[str, str, str] = ("lat", "lon", "wealth")) -> Path:
        path = self.inp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(rows, columns=list(columns))
        frame.insert(0, "cluster_id", [f"c{i}" for i in range(len(rows))])
        frame["country"] = [f"k{i % 3}" for i in range(len(rows))]
        frame.to_csv(path, index=False)
        return path

    def inside(self, n: int = 24) -> list[tuple[float, float, float]]:
        """Points inside :meth:`scene` (64 x 30 m around 550 km E, 50 km N of UTM 31N)."""
        from rasterio.warp import transform

        rng = np.random.default_rng(1)
        lon, lat = transform("EPSG:32631", "EPSG:4326", list(550_000 + rng.uniform(400, 1500, n)),
                             list(50_000 - rng.uniform(400, 1500, n)))
        return [(la, lo, float(i % 5)) for i, (la, lo) in enumerate(zip(lat, lon))]

    def earth_config(self, scene: Path | str, survey: Path, extra: str = "", earth_extra: str = "") -> Path:
        return self.config(f"data:\n  format: survey\n  catalog: {survey}\n  targets: [wealth]\n  chip_size: 8\n"
                           f"  group_column: country\n  store_root: {self.out / 'stores'}\n"
                           f"earth:\n  scenes: ['{scene}']\n  chip_px: 8\n{earth_extra}"
                           f"model:\n  backbone: test_resnet\n  task: regression\n  transfer: from_scratch\n"
                           f"train:\n  epochs: 1\nsplit:\n  method: grouped\n{extra}")

    def bundle(self, bands: int = 3, chip: int = 16, kind: str = "galaxy") -> Path:
        """A real bundle (random weights) expecting ``bands`` bands and ``chip`` px chips."""
        from geocnn.data.chips import ChipSpec
        from tests.helpers import write_bundle

        if kind == "galaxy":
            names = ["red", "green", "blue"] if bands == 3 else [f"band{i + 1}" for i in range(bands)]
            return write_bundle(self.inp / "bundle", ChipSpec(out_px=chip, crop=chip), names, task="regression",
                                targets=("y",), mean=0.5, std=0.2)
        return write_bundle(self.inp / "bundle", ChipSpec(out_px=chip, files=False, chip_px=chip),
                            [f"b{i}" for i in range(bands)], domain="earth", task="regression", targets=("y",),
                            mean=0.5, std=0.2, dtype="float32")


@dataclass
class Case:
    """One bad input: how to build it, the CLI arguments, and what the message must name."""

    id: str
    build: Callable[[Ctx], list[str]]
    expect: tuple[str, ...]
    needs_shared: bool = False


def _missing_catalog(c: Ctx) -> list[str]:
    return ["train", str(c.config(f"data:\n  catalog: {c.inp / 'nope.csv'}\n  targets: [label]\n"))]


def _missing_image(c: Ctx) -> list[str]:
    f = c.galaxies()
    (c.inp / "img" / "g5.png").unlink()
    return ["train", str(c.galaxy_config(f))]


def _truncated_png(c: Ctx) -> list[str]:
    f = c.galaxies()
    data = (c.inp / "img" / "g3.png").read_bytes()
    (c.inp / "img" / "g3.png").write_bytes(data[: len(data) // 2])
    return ["train", str(c.galaxy_config(f))]


def _text_as_image(c: Ctx) -> list[str]:
    f = c.galaxies()
    (c.inp / "img" / "g4.png").write_text("not an image")
    return ["train", str(c.galaxy_config(f))]


def _nan_target(c: Ctx) -> list[str]:
    f = c.galaxies(target="y")
    f["y"] = f["y"].astype(float)
    f.loc[7, "y"] = np.nan
    return ["train", str(c.galaxy_config(f, targets="[y]", task="regression"))]


def _inf_target(c: Ctx) -> list[str]:
    f = c.galaxies(target="y")
    f.loc[2, "y"] = np.inf
    return ["train", str(c.galaxy_config(f, targets="[y]", task="regression"))]


def _duplicate_ids(c: Ctx) -> list[str]:
    f = c.galaxies()
    f.loc[6, "id"] = "g1"
    return ["train", str(c.galaxy_config(f))]


def _empty_catalog(c: Ctx) -> list[str]:
    return ["train", str(c.galaxy_config(c.galaxies().iloc[:0]))]


def _missing_target_column(c: Ctx) -> list[str]:
    return ["train", str(c.galaxy_config(c.galaxies(), targets="[morphology]"))]


def _empty_val_partition(c: Ctx) -> list[str]:
    return ["train", str(c.galaxy_config(c.galaxies(40), "split:\n  method: random\n  val_fraction: 0.0\n"))]


def _constant_target(c: Ctx) -> list[str]:
    f = c.galaxies(40, target="y")
    f["y"] = 1.5
    return ["train", str(c.galaxy_config(f, targets="[y]", task="regression"))]


def _single_class(c: Ctx) -> list[str]:
    f = c.galaxies(40)
    f["label"] = 1
    return ["train", str(c.galaxy_config(f))]


def _too_few_rows(c: Ctx) -> list[str]:
    return ["train", str(c.galaxy_config(c.galaxies(3)))]


def _image_smaller_than_crop(c: Ctx) -> list[str]:
    f = c.galaxies(12, size=20)
    return ["train", str(c.galaxy_config(f))]


def _unknown_key(c: Ctx) -> list[str]:
    return ["train", str(c.config("trian:\n  epochs: 2\n"))]


def _mistyped_value(c: Ctx) -> list[str]:
    return ["train", str(c.config("train:\n  epochs: many\n"))]


def _unknown_override(c: Ctx) -> list[str]:
    return ["train", str(c.config("")), "--set", "model.bakbone=resnet18"]


def _missing_config(c: Ctx) -> list[str]:
    return ["train", str(c.inp / "missing.yaml")]


def _invalid_yaml(c: Ctx) -> list[str]:
    path = c.inp / "broken.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("data:\n  catalog: [unclosed\n")
    return ["train", str(path)]


def _missing_scene(c: Ctx) -> list[str]:
    return ["train", str(c.earth_config(c.inp / "nowhere.tif", c.survey(c.inside())))]


def _corrupt_header(c: Ctx) -> list[str]:
    bad = c.shared / "satellite" / "formats" / "bad" / "corrupt_header.tif"
    return ["train", str(c.earth_config(bad, c.survey(c.inside())))]


def _corrupt_image(c: Ctx) -> list[str]:
    bad = c.shared / "satellite" / "formats" / "bad" / "corrupt_image.tif"
    return ["train", str(c.earth_config(bad, c.survey(c.inside())))]


def _no_crs(c: Ctx) -> list[str]:
    return ["train", str(c.earth_config(c.scene(crs=None), c.survey(c.inside())))]


def _points_outside(c: Ctx) -> list[str]:
    far = [(45.0 + 0.01 * i, -100.0, float(i)) for i in range(12)]
    return ["train", str(c.earth_config(c.scene(), c.survey(far)))]


def _all_nodata(c: Ctx) -> list[str]:
    return ["train", str(c.earth_config(c.scene(fill=-9999, nodata=-9999), c.survey(c.inside())))]


def _survey_without_lat(c: Ctx) -> list[str]:
    return ["train", str(c.earth_config(c.scene(), c.survey(c.inside(), columns=("latitude", "lon", "wealth"))))]


def _survey_nan_coordinate(c: Ctx) -> list[str]:
    pts = c.inside()
    pts[4] = (float("nan"), pts[4][1], pts[4][2])
    return ["train", str(c.earth_config(c.scene(), c.survey(pts)))]


def _survey_nan_target(c: Ctx) -> list[str]:
    pts = c.inside()
    pts[9] = (pts[9][0], pts[9][1], float("nan"))
    return ["train", str(c.earth_config(c.scene(), c.survey(pts)))]


def _unknown_band(c: Ctx) -> list[str]:
    return ["train", str(c.earth_config(c.scene(), c.survey(c.inside()), earth_extra="  bands: [swir9]\n"))]


def _map_wrong_band_count(c: Ctx) -> list[str]:
    return ["map", "--model", str(c.bundle(bands=4, chip=8, kind="earth")), "--scene", str(c.scene(bands=3)),
            "--out", str(c.out / "map")]


def _map_scene_without_crs(c: Ctx) -> list[str]:
    return ["map", "--model", str(c.bundle(bands=3, chip=8, kind="earth")), "--scene", str(c.scene(crs=None)),
            "--out", str(c.out / "map")]


def _map_scene_smaller_than_chip(c: Ctx) -> list[str]:
    return ["map", "--model", str(c.bundle(bands=3, chip=128, kind="earth")), "--scene", str(c.scene(size=64)),
            "--out", str(c.out / "map")]


def _predict_images_smaller_than_chip(c: Ctx) -> list[str]:
    c.galaxies(3, size=16)
    return ["predict", "--model", str(c.bundle(chip=32)), "--images", str(c.inp / "img"),
            "--out", str(c.out / "p.csv")]


def _predict_wrong_band_count(c: Ctx) -> list[str]:
    c.galaxies(3, size=32)
    return ["predict", "--model", str(c.bundle(bands=4, chip=16)), "--images", str(c.inp / "img"),
            "--out", str(c.out / "p.csv")]


def _predict_not_a_bundle(c: Ctx) -> list[str]:
    c.galaxies(2)
    (c.inp / "fake").mkdir()
    return ["predict", "--model", str(c.inp / "fake"), "--images", str(c.inp / "img"), "--out", str(c.out / "p.csv")]


def _predict_pickled_weights(c: Ctx) -> list[str]:
    import torch

    c.galaxies(2)
    bundle = c.bundle(chip=16)
    for f in bundle.glob("*.safetensors"):
        f.unlink()
    torch.save({"evil": __import__("collections").OrderedDict()}, bundle / "weights.pt")
    return ["predict", "--model", str(bundle), "--images", str(c.inp / "img"), "--out", str(c.out / "p.csv")]


def _predict_empty_folder(c: Ctx) -> list[str]:
    (c.inp / "empty").mkdir(parents=True)
    return ["predict", "--model", str(c.bundle()), "--images", str(c.inp / "empty"), "--out", str(c.out / "p.csv")]


def _predict_catalog_escapes_root(c: Ctx) -> list[str]:
    c.galaxies(2)
    write_rgb(c.root / "elsewhere" / "x.png", 32)  # a real image, outside the catalog's folder
    pd.DataFrame({"id": ["a"], "file": ["../../elsewhere/x.png"]}).to_csv(c.inp / "img" / "cat.csv", index=False)
    return ["predict", "--model", str(c.bundle()), "--catalog", str(c.inp / "img" / "cat.csv"),
            "--out", str(c.out / "p.csv")]


def _score_missing_column(c: Ctx) -> list[str]:
    c.inp.mkdir(parents=True)
    pd.DataFrame({"y": [1.0, 2.0, 3.0], "p": [1.1, 2.1, 2.9]}).to_csv(c.inp / "t.csv", index=False)
    return ["score", str(c.inp / "t.csv"), "--target", "y", "--prediction", "pred"]


def _score_nan_prediction(c: Ctx) -> list[str]:
    c.inp.mkdir(parents=True)
    pd.DataFrame({"y": [1.0, 2.0, 3.0], "p": [1.1, np.nan, 2.9]}).to_csv(c.inp / "t.csv", index=False)
    return ["score", str(c.inp / "t.csv"), "--target", "y", "--prediction", "p"]


def _export_not_a_run(c: Ctx) -> list[str]:
    c.inp.mkdir(parents=True)
    return ["export", str(c.inp), "--out", str(c.out / "export")]


def _watch_missing_folder(c: Ctx) -> list[str]:
    cfg = c.config("")
    return ["watch", str(cfg), "--model", str(c.bundle()), "--input", str(c.inp / "inbox"),
            "--output", str(c.out / "preds")]


CASES = [
    # galaxy catalogs and images (geocnn train)
    Case("missing catalog file", _missing_catalog, ("nope.csv", "data.catalog")),
    Case("missing image", _missing_image, ("g5.png", "row 7")),
    Case("truncated png", _truncated_png, ("g3.png", "row 5")),
    Case("text file as image", _text_as_image, ("g4.png", "row 6")),
    Case("nan target", _nan_target, ("row 9", "'y'")),
    Case("inf target", _inf_target, ("row 4", "'y'")),
    Case("duplicate ids", _duplicate_ids, ("g1", "id")),
    Case("empty catalog", _empty_catalog, ("cat.csv", "no rows")),
    Case("missing target column", _missing_target_column, ("morphology", "data.targets")),
    Case("empty validation partition", _empty_val_partition, ("split.val_fraction",)),
    Case("constant target", _constant_target, ("'y'", "constant")),
    Case("single class", _single_class, ("label", "class")),
    Case("too few rows to split", _too_few_rows, ("split",)),
    Case("image smaller than crop", _image_smaller_than_crop, ("g0.png", "data.crop")),
    # configs
    Case("unknown config key", _unknown_key, ("trian",)),
    Case("mistyped config value", _mistyped_value, ("train.epochs",)),
    Case("unknown override key", _unknown_override, ("model.bakbone",)),
    Case("missing config file", _missing_config, ("missing.yaml",)),
    Case("invalid yaml", _invalid_yaml, ("broken.yaml",)),
    # Earth scenes and surveys (geocnn train)
    Case("missing scene", _missing_scene, ("nowhere.tif", "earth.scenes")),
    Case("corrupt raster header", _corrupt_header, ("corrupt_header.tif",), needs_shared=True),
    Case("corrupt raster without georeferencing", _corrupt_image, ("corrupt_image.tif",), needs_shared=True),
    Case("raster without crs", _no_crs, ("scene.tif", "CRS")),
    Case("survey points outside every scene", _points_outside, ("survey.csv", "outside every scene", "scene.tif")),
    Case("all-nodata scene", _all_nodata, ("survey.csv", "nodata", "earth.nodata")),
    Case("survey without latitude column", _survey_without_lat, ("'lat'", "earth.lat_column")),
    Case("survey row with nan coordinate", _survey_nan_coordinate, ("row 6",)),
    Case("survey row with nan target", _survey_nan_target, ("row 11", "wealth")),
    Case("unknown band", _unknown_band, ("swir9", "earth.bands")),
    # bundles applied to the wrong data (geocnn map / predict)
    Case("map: wrong band count", _map_wrong_band_count, ("scene.tif", "3 band", "expects 4")),
    Case("map: scene without crs", _map_scene_without_crs, ("scene.tif", "CRS")),
    Case("map: scene smaller than chip", _map_scene_smaller_than_chip, ("scene.tif", "64x64", "128 px")),
    Case("predict: images smaller than chip", _predict_images_smaller_than_chip, ("g0.png", "32")),
    Case("predict: wrong band count", _predict_wrong_band_count, ("img", "(3, 16, 16)", "(4, 16, 16)")),
    Case("predict: not a bundle", _predict_not_a_bundle, ("fake", "bundle")),
    Case("predict: pickled weights refused", _predict_pickled_weights, ("weights.pt", "never loaded", "safetensors")),
    Case("predict: empty image folder", _predict_empty_folder, ("empty",)),
    Case("predict: catalog path escapes its folder", _predict_catalog_escapes_root, ("row", "--allow-outside-root")),
    # tables and folders (geocnn score / export / watch)
    Case("score: missing column", _score_missing_column, ("pred",)),
    Case("score: nan prediction", _score_nan_prediction, ("row", "p")),
    Case("export: not a run folder", _export_not_a_run, ("predictions.parquet",)),
    Case("watch: missing input folder", _watch_missing_folder, ("inbox",)),
]


def digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_error_with_no_output_and_inputs_untouched(case: Case, tmp_path: Path,
                                                                          request: pytest.FixtureRequest) -> None:
    shared = request.getfixturevalue("shared_data") if case.needs_shared else None
    ctx = Ctx(tmp_path, shared)
    args = case.build(ctx)
    before = digest(ctx.inp)
    shared_before = digest(shared / "satellite" / "formats" / "bad") if shared else {}
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr  # one message (progress bars may precede it)
    message = result.stderr[result.stderr.index(errors[0]):]  # the message, with any lines it continues on
    for needle in case.expect:
        assert needle.lower() in message.lower(), f"{needle!r} not in: {message}"
    written = [p for p in ctx.out.rglob("*") if p.is_file()] if ctx.out.exists() else []
    stores = ctx.out / "stores"
    complete = {d for d in stores.iterdir() if (d / "meta.json").exists()} if stores.exists() else set()
    partial = [p for p in written if not any(d in p.parents for d in complete)]
    assert partial == [], f"output left behind: {partial}"  # complete chip stores (a valid cache) may stay
    assert not [p for p in ctx.root.rglob("*.part*")]
    assert digest(ctx.inp) == before, "an input file was modified"
    if shared:
        assert digest(shared / "satellite" / "formats" / "bad") == shared_before


@pytest.mark.slow
def test_debug_flag_shows_the_traceback(tmp_path: Path) -> None:
    ctx = Ctx(tmp_path, None)
    args = _nan_target(ctx)
    cmd = [sys.executable, "-m", "geocnn.cli"]
    plain = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "row 9" in plain.stderr
    debug = subprocess.run([*cmd, "--debug", *args], capture_output=True, text=True, timeout=300)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "GeocnnError" in debug.stderr
    assert "row 9" in debug.stderr
