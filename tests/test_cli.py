"""The command line: user errors exit 2 with one clear message (traceback only with --debug); export; alias."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from geocnn.cli import app

runner = CliRunner()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `geocnn` in a fresh process, as a user would."""
    return subprocess.run([sys.executable, "-m", "geocnn.cli", *args], capture_output=True, text=True,
                          env=os.environ.copy())


def test_mistyped_config_key_is_a_clean_error(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("name: x\ntrain:\n  epoks: 3\n")
    proc = run_cli("run", str(cfg))
    assert proc.returncode == 2
    assert "unknown key 'train.epoks'" in proc.stderr and str(cfg) in proc.stderr
    assert "Traceback" not in proc.stderr
    debug = run_cli("--debug", "run", str(cfg))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_bad_override_and_missing_config(tmp_path: Path) -> None:
    res = runner.invoke(app, ["config", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "does not exist" in res.output
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("name: x\n")
    res = runner.invoke(app, ["config", str(cfg), "--set", "train.epochs=-1"])
    assert res.exit_code == 2 and "train.epochs" in res.output
    res = runner.invoke(app, ["config", str(cfg), "--set", "model.backbone=convnext_atto", "--set", "train.epochs=2"])
    assert res.exit_code == 0 and "backbone: convnext_atto" in res.output and "epochs: 2" in res.output


@pytest.mark.slow
def test_missing_image_names_row_and_leaves_no_output(tmp_path: Path) -> None:
    from tests.conftest import write_rgb

    for i in range(3):
        write_rgb(tmp_path / "img" / f"g{i}.png", 64, seed=i)
    pd.DataFrame({"id": ["g0", "g1", "g2", "g3"], "file": [f"img/g{i}.png" for i in range(4)],
                  "label": [0, 1, 0, 1]}).to_csv(tmp_path / "cat.csv", index=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: x\noutput_dir: {tmp_path / 'out'}\ndata:\n  catalog: {tmp_path / 'cat.csv'}\n"
                   f"  targets: [label]\n  crop: 32\n  chip_size: 16\n  store_root: {tmp_path / 'stores'}\n")
    proc = run_cli("train", str(cfg))
    assert proc.returncode == 2, proc.stderr
    assert "row 5" in proc.stderr and "g3.png" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and not any((tmp_path / "stores").glob("*")) if (tmp_path / "stores").exists() else True


def test_export_writes_requested_split_and_formats(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    frame = pd.DataFrame({"id": ["a", "b", "c"], "split": ["train", "test", "test"], "y": [1.0, 2.0, 3.0],
                          "pred_y": [1.1, 2.2, 2.9]})
    frame.to_parquet(run / "predictions.parquet", index=False)
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "exp"), "--split", "test"])
    assert res.exit_code == 0, res.output
    got = pd.read_csv(tmp_path / "exp" / "predictions.csv")
    assert got["id"].tolist() == ["b", "c"] and got["pred_y"].tolist() == [2.2, 2.9]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "exp" / "predictions.parquet"), got)
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "exp2"), "--formats", "xlsx"])
    assert res.exit_code == 2 and "xlsx" in res.output
    assert not (tmp_path / "exp2").exists() or not any((tmp_path / "exp2").iterdir())


def test_predict_rejects_non_bundle(tmp_path: Path) -> None:
    res = runner.invoke(app, ["predict", "--model", str(tmp_path), "--images", str(tmp_path), "--out",
                              str(tmp_path / "p.csv")])
    assert res.exit_code == 2 and "not a geocnn bundle" in res.output
    assert not (tmp_path / "p.csv").exists()


def test_alias_on_unknown_model_is_clean_error() -> None:
    res = runner.invoke(app, ["alias", "no_such_model", "1", "champion"])
    assert res.exit_code == 2 and "no_such_model" in res.output


@pytest.mark.slow
def test_demo_quick_runs_both_flows_and_beats_the_baselines(tmp_path: Path) -> None:
    """`geocnn demo` (the README's main command), in its quick form, as a user runs it: galaxies, then Earth."""
    import json

    proc = run_cli("demo", "all", "--quick", "--set", f"output_dir={tmp_path}/{{name}}",
                   "--set", f"data.store_root={tmp_path / 'stores'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Held-out metrics" in proc.stdout and "baseline" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout
    galaxy = json.loads((tmp_path / "galaxy_demo" / "metrics.json").read_text())
    assert galaxy["test/accuracy"] > galaxy["baseline/accuracy"] + 0.2, galaxy
    assert (tmp_path / "synthetic").is_dir()  # generated beside the stores, not in the project
    earth = json.loads((tmp_path / "poverty_demo" / "metrics.json").read_text())
    assert earth["test/r2"] > earth["baseline/r2"] + 0.2, earth
    assert (tmp_path / "poverty_demo" / "maps" / "prediction.tif").exists()
    assert "baseline_nightlights/r2" in proc.stdout  # generated beside the stores, not in the project
