"""The command line: user errors exit 2 with one clear message (traceback only with --debug); export; alias."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from geocnn.cli import app

runner = CliRunner()
GEOCNN = [sys.executable, "-m", "geocnn.cli"]


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
    assert "Held-out metrics" in proc.stdout and "baseline" in proc.stdout
    assert "mlflow ui --backend-store-uri" in proc.stdout and "run page" not in proc.stdout  # SQLite: no server
    assert "registered   models:/galaxy_demo/" in proc.stdout and "checkpoints deleted" in proc.stdout
    # a quiet console: no warnings from third parties or from geocnn, no download bars, no MLflow housekeeping
    noise = [line for line in proc.stderr.splitlines()
             if "Warning" in line or "warn(" in line or "Downloading" in line or "database tables" in line
             or "Traceback" in line]
    assert not noise, noise
    assert "epoch 4/4  train/loss" in proc.stderr  # not a terminal: one line per epoch instead of bars
    galaxy = json.loads((tmp_path / "galaxy_demo" / "metrics.json").read_text())
    assert galaxy["test/accuracy"] > galaxy["baseline/accuracy"] + 0.2, galaxy
    assert (tmp_path / "synthetic").is_dir()  # generated beside the stores, not in the project
    earth = json.loads((tmp_path / "poverty_demo" / "metrics.json").read_text())
    assert earth["test/r2"] > earth["baseline/r2"] + 0.2, earth
    assert (tmp_path / "poverty_demo" / "maps" / "prediction.tif").exists()
    assert "baseline_nightlights/r2" in proc.stdout  # generated beside the stores, not in the project


# ------------------------------------------------------------------------------------------ native command line
def test_version_and_help_in_the_usual_style() -> None:
    from geocnn import __version__

    assert runner.invoke(app, ["--version"]).output.strip() == f"geocnn {__version__}"
    for args in (["--help"], ["serve", "--help"], ["predict", "--help"], ["run", "--help"]):
        text = runner.invoke(app, args, env={"COLUMNS": "120"}).output
        assert "<bool>" not in text and "{config}" not in text and "<int>" not in text, text
    serve = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "120"}).output
    assert "serve [OPTIONS] CONFIG" in serve and "--port" in serve and "INTEGER" in serve


def test_every_command_is_in_the_readme_command_list() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    listed = readme.split("## Command line", 1)[1].split("```", 2)[1]
    for command in app.registered_commands:
        name = command.name or command.callback.__name__.replace("_", "-")
        assert f"geocnn {name}" in listed, name


def test_a_backbone_typo_is_caught_before_any_work_with_real_suggestions(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  format: csv\n  catalog: {tmp_path / 'missing.csv'}\n  targets: [y]\n"
                   "model:\n  backbone: resnt18\n")
    res = run_cli("train", str(cfg))
    assert res.returncode == 2
    assert "model.backbone='resnt18' is not a timm model. Did you mean resnet18" in res.stderr, res.stderr
    assert "missing.csv" not in res.stderr  # the config is refused before any data is read
    assert "resnet18" in runner.invoke(app, ["config", str(cfg)]).output


def test_serve_refuses_a_bad_cron_before_starting_any_server(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: s\noutput_dir: {tmp_path / 'run'}\n")
    home = tmp_path / "prefect"
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    res = subprocess.run([*GEOCNN, "serve", str(cfg), "--retrain-cron", "61 * * * *", "--no-predict"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 2
    assert "retrain schedule '61 * * * *'" in res.stderr and "not a valid cron expression" in res.stderr
    assert not (home / "server.log").exists()  # refused before a Prefect server was started
    res = subprocess.run([*GEOCNN, "serve", str(cfg), "--predict-every", "-5", "--no-retrain"], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 2 and "must be a positive number of seconds" in res.stderr
    assert not (home / "server.log").exists()


def test_schedules_read_as_durations() -> None:
    from geocnn.serving.schedules import describe_schedule

    assert describe_schedule(60.0, "UTC") == "every 1 min"
    assert describe_schedule(90, "UTC") == "every 1 min 30 s"
    assert describe_schedule(7200, "UTC") == "every 2 h"
    assert describe_schedule(0.5, "UTC") == "every 0.5 s"
    assert describe_schedule("0 3 * * 0", "Europe/Paris") == "cron '0 3 * * 0' (Europe/Paris)"


def test_named_test_time_views() -> None:
    from geocnn.config import AugmentConfig
    from geocnn.config.common import parse_views

    assert [parse_views(n) for n in ("none", "flip2", "rot4", "dihedral8", "rot6", "8")] == [1, 2, 4, 8, 6, 8]
    assert AugmentConfig(tta_views="rot4").tta_views == 4
    with pytest.raises(ValueError, match="exact dihedral set"):
        parse_views("rot8")
    with pytest.raises(ValueError, match="unknown test-time views"):
        parse_views("mirror")


def test_predict_class_folders_keeps_the_true_class_skips_a_corrupt_file_and_scores(tmp_path: Path) -> None:
    """Two commands: predict a held-out class-folder set (one file corrupt), then score the table."""
    import json

    from geocnn.data.chips import ChipSpec
    from tests.conftest import write_rgb
    from tests.helpers import write_bundle

    bundle = write_bundle(tmp_path / "bundle", ChipSpec(out_px=16, files=True, crop=16), ["r", "g", "b"],
                          targets=("label",), classes=("cat", "dog"))
    held = tmp_path / "test"
    for cls in ("cat", "dog"):
        for i in range(3):
            write_rgb(held / cls / f"{i}.png", size=16, seed=i)
    (held / "dog" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "p.csv"
    res = run_cli("predict", "--model", str(bundle), "--images", str(held), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "skipped dog/broken:" in res.stderr and "1 unreadable files skipped" in res.stdout
    table = pd.read_csv(out)
    assert sorted(table["id"]) == ["cat/0", "cat/1", "cat/2", "dog/0", "dog/1", "dog/2"]  # the training ids
    assert (table["label"] == table["id"].str.split("/").str[0]).all()
    res = run_cli("score", str(out), "--target", "label", "--group", "label")
    assert res.returncode == 0, res.stderr
    scores = json.loads(res.stdout)
    probs = table[["prob_cat", "prob_dog"]].to_numpy()
    want = (probs.argmax(1) == (table["label"] == "dog").to_numpy()).mean()
    assert scores["pooled"]["accuracy"] == pytest.approx(want) and scores["pooled"]["n"] == 6
    assert set(scores["pooled"]) >= {"balanced_accuracy", "roc_auc", "log_loss"}
    assert set(scores["groups"]) == {"cat", "dog"} and "accuracy" in scores["group_mean"]
    res = run_cli("score", str(out), "--target", "label_missing")
    assert res.returncode == 2 and "label_missing" in res.stderr


def test_montage_shows_confident_errors_then_every_class() -> None:
    import numpy as np

    from geocnn.domains.galaxy import montage_order

    truth = np.array([0] * 20 + [1] * 20 + [2] * 20)
    proba = np.eye(3)[truth] * 0.9 + 0.05
    proba[[3, 25]] = [[0.02, 0.96, 0.02], [0.2, 0.3, 0.5]]  # two errors, the first far more confident
    picked = montage_order(truth, proba, 8, seed=0)
    assert picked[:2].tolist() == [3, 25]
    assert sorted(set(truth[picked[2:]].tolist())) == [0, 1, 2] and len(set(picked.tolist())) == 8


def test_the_ui_hint_works_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from geocnn.tracking.runs import ui_command

    assert (Path.cwd() / ui_command("sqlite:///x.db").split()[0]).exists()
    monkeypatch.chdir(tmp_path)  # outside the project: the command still points at this environment's mlflow
    assert (tmp_path / ui_command("sqlite:///x.db").split()[0]).exists()


def test_prefect_results_live_in_the_projects_data_folder(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_RESULTS_LOCAL_STORAGE_PATH"}
    env.pop("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", None)
    code = ("import os, pipelines; print(os.environ['PREFECT_RESULTS_LOCAL_STORAGE_PATH']); "
            "print(os.environ['PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS'])")
    project = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(project)},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(tmp_path / "data" / "prefect" / "results"), "180"]


@pytest.mark.slow
def test_an_error_inside_a_flow_is_one_line_and_a_server_that_does_not_start_says_what_to_do(tmp_path: Path) -> None:
    from tests.conftest import write_rgb

    write_rgb(tmp_path / "img" / "a.png", size=16)
    rows = [{"id": f"s{i}", "file": "a.png" if i else "gone.png", "y": float(i)} for i in range(30)]
    pd.DataFrame(rows).to_csv(tmp_path / "img" / "cat.csv", index=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: flowerr\noutput_dir: {tmp_path / 'run'}\ndata:\n  format: csv\n  catalog: "
                   f"{tmp_path / 'img' / 'cat.csv'}\n  targets: [y]\n  crop: 16\n  chip_size: 16\n  store_root: "
                   f"{tmp_path / 'stores'}\nmodel:\n  task: regression\n  backbone: test_resnet\n")
    res = run_cli("run", str(cfg))  # through the Prefect flow: the ingest task fails on the missing image
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "gone.png" in errors[0], res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    debug = run_cli("--debug", "run", str(cfg))
    assert debug.returncode != 0 and "Traceback" in debug.stderr  # the details stay one flag away

    env = {**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1"}
    env.pop("PREFECT_API_URL", None)
    slow = subprocess.run([sys.executable, "-m", "geocnn.cli", "run", str(cfg)], capture_output=True, text=True,
                          env=env)
    assert slow.returncode == 2 and "Traceback" not in slow.stderr, slow.stderr[-3000:]
    assert "temporary API server did not start in time" in slow.stderr and "--no-prefect" in slow.stderr


@pytest.mark.slow
def test_on_a_terminal_the_progress_bars_show_the_loss_and_the_monitored_metric(tmp_path: Path) -> None:
    """Under a pseudo-terminal, training shows Lightning's bar with train/loss, val/loss and the monitored metric
    (not the one-line-per-epoch log of a pipe), and evaluation has a bar of its own."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    from geocnn.synthetic.galaxies import make_galaxies

    catalog = make_galaxies(tmp_path / "syn", 80, 48, seed=2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: bars\noutput_dir: {tmp_path / 'run'}\ndata:\n  format: csv\n  catalog: {catalog}\n"
                   f"  targets: [morphology]\n  crop: 48\n  chip_size: 24\n  store_root: {tmp_path / 'stores'}\n"
                   "split:\n  method: stratified\n  val_fraction: 0.25\n  test_fraction: 0.25\n"
                   "model:\n  backbone: test_resnet\n  task: classification\n"
                   "train:\n  epochs: 2\n  batch_size: 16\n  monitor: val/accuracy\naugment:\n  tta_views: 2\n"
                   "tracking:\n  enabled: false\n")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))  # a terminal 200 columns wide
    proc = subprocess.Popen([sys.executable, "-m", "geocnn.cli", "train", str(cfg)], stdin=slave, stdout=slave,
                            stderr=slave, env={**os.environ, "COLUMNS": "200"}, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 300)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    for metric in ("train/loss", "val/loss", "val/accuracy"):  # rich bar "name: 0.123" (tqdm: "name=0.123")
        assert re.search(re.escape(metric) + r"[:=] ?\d", text), (metric, text[-3000:])
    assert "epoch 1/2  train/loss" not in text  # the log-file form is for pipes only
    assert "evaluate held-out" in text  # evaluation's own bar
