"""The flow's aggregate step: maps.aggregate_polygons/population make the Earth domain's outputs aggregate the
run's map (aggregate_* files), and track() logs them under the run's `aggregates` artifacts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from geocnn.config import load_config
from geocnn.domains import earth as earth_domain
from geocnn.domains.base import Evaluation
from tests.outputs.test_aggregate import PEOPLE, VALUES, cells, write_polygons, write_raster


def test_earth_outputs_aggregate_the_run_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    map_path = write_raster(tmp_path / "prediction.tif", [VALUES], ["wealth"])
    pop = write_raster(tmp_path / "pop.tif", [PEOPLE])
    polys = write_polygons(tmp_path / "units.gpkg", [cells(0, 0, 2, 2), cells(2, 2, 2, 2)], names=["A", "B"])
    cfg = load_config(overrides=["name=agg", f"output_dir={tmp_path / 'run'}", "data.format=survey",
                                 f"data.catalog={tmp_path / 'points.csv'}", "data.targets=[wealth]", "earth.chip_px=2",
                                 f"earth.scenes=[{map_path}]", "maps.html=false",
                                 f"maps.aggregate_polygons={polys}", f"maps.aggregate_population={pop}"])
    calls = {}

    def fake_map_scenes(bundle: Path, scenes: list[str], out_dir: Path, *args: object, **kwargs: object) -> dict:
        calls["out_dir"] = out_dir
        return {"map_tif": map_path}  # the run's map: the 4x4 hand-computed raster

    monkeypatch.setattr(earth_domain, "map_scenes", fake_map_scenes)
    table = pd.DataFrame({"wealth": [0.1, 0.2]})
    paths = earth_domain.EarthDomain().outputs(None, Evaluation({}, table), None, cfg, tmp_path / "bundle")
    assert {"aggregate_vector", "aggregate_csv", "aggregate_parquet"} <= set(paths)
    assert paths["aggregate_vector"] == calls["out_dir"] / "aggregates.gpkg"
    out = pd.read_csv(paths["aggregate_csv"]).set_index("name")
    assert out.loc["A", "prediction_mean"] == pytest.approx((1 * 1 + 4 * 2 + 5 * 3) / 6)  # population-weighted
    assert out.loc["B", "prediction_mean"] == pytest.approx((10 + 11 + 14) / 3)  # pixel 15 has no people
    assert (out["weighting"] == "population").all()
