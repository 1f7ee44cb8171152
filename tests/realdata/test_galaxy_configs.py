"""The shipped configs on the real sample data: Kaggle ingestion, DECaLS ring classification and vote fractions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from geocnn.config import load_config
from geocnn.domains import ingest, run_experiment

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def run_shipped(name: str, tmp_path: Path, *extra: str) -> dict[str, float]:
    """Run a shipped config end to end in tmp_path (MLflow isolated by the autouse fixture)."""
    cfg = load_config(CONFIGS / name, [f"output_dir={tmp_path / 'run'}", f"data.store_root={tmp_path / 'stores'}",
                                       *extra])
    run_experiment(cfg, progress=False)
    return json.loads((tmp_path / "run" / "metrics.json").read_text())


def test_kaggle_config_ingests_the_real_rows_as_dieleman(shared_data: Path, tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "galaxy_kaggle_dieleman.yaml", [f"data.store_root={tmp_path}"])
    assert Path(cfg.data.catalog).resolve() == (shared_data / "galaxy/kaggle_sample/training_solutions_rev1.csv").resolve()
    store = ingest(cfg, progress=False)
    chips = store.chips
    assert chips.shape == (3, 3, 69, 69) and chips.dtype == np.uint8
    assert len(store.targets) == 37 and store.targets[0] == "Class1.1"
    # Centre crop 207 of 424 then 69 px: the galaxy centre is brighter than the chip's corners.
    centre = chips[:, :, 30:39, 30:39].astype(float).mean(axis=(1, 2, 3))
    corners = chips[:, :, :8, :8].astype(float).mean(axis=(1, 2, 3))
    assert (centre > corners + 20).all(), (centre, corners)


@pytest.mark.full
def test_decals_rings_config_in_short_beats_the_majority_baseline(shared_data: Path, tmp_path: Path) -> None:
    """The shipped ring config for 10 of its 30 epochs (CI; the full config is the `full` tier): on the same
    stratified split, measured accuracy 0.67 and ROC AUC 0.75 against 0.5."""
    m = run_shipped("galaxy_decals_rings.yaml", tmp_path, "train.epochs=10")
    assert m["test/n"] == 94 and m["baseline/accuracy"] == pytest.approx(0.5, abs=0.01)
    assert m["test/roc_auc"] > 0.65 and m["test/accuracy"] > m["baseline/accuracy"] + 0.05, m


@pytest.mark.full
def test_decals_rings_config_beats_the_majority_baseline(shared_data: Path, tmp_path: Path) -> None:
    m = run_shipped("galaxy_decals_rings.yaml", tmp_path)
    print("rings:", json.dumps({k: round(v, 4) for k, v in m.items()}))
    assert m["test/n"] == 94 and m["baseline/accuracy"] == pytest.approx(0.5, abs=0.01)
    # Validation-chosen settings reached 0.68-0.69 test accuracy over 3 model seeds; 0.62 is 59 of 94 galaxies,
    # two binomial standard errors above chance.
    assert m["test/accuracy"] >= 0.62, m
    assert m["test/roc_auc"] >= 0.68, m


@pytest.mark.full
def test_decals_fractions_config_reports_rmse_beside_the_mean_baseline(shared_data: Path, tmp_path: Path) -> None:
    m = run_shipped("galaxy_decals_fractions.yaml", tmp_path)
    print("fractions:", json.dumps({k: round(v, 4) for k, v in m.items()}))
    assert {"test/rmse", "baseline/rmse", "test/r2", "test/pearson_r2"} <= m.keys()
    for target in ("smooth-or-featured_featured-or-disk_fraction", "disk-edge-on_no_fraction",
                   "has-spiral-arms_no_fraction"):
        assert f"test/rmse/{target}" in m
    # These fractions vary little in the sample (std ~0.1): the model only matches the train-mean baseline.
    # It must at least not be worse than it by more than 10 percent, and be far below the std of a [0, 1] guess.
    assert m["test/rmse"] < 1.1 * m["baseline/rmse"], m
    assert m["baseline/rmse"] < 0.1
