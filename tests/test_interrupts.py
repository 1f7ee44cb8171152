"""Faults injected for real: SIGKILL during a chip-store build and during a map export, then the same command again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from tests.conftest import write_rgb

BUILD = """
import sys
from geocnn.config import load_config
from geocnn.domains import ingest
cfg = load_config(overrides=sys.argv[1:])
print(ingest(cfg, progress=False).root)
"""


def default_sigint() -> None:
    """In the child: SIGINT raises KeyboardInterrupt, as in a terminal, even if this process ignores it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kill_when(proc: subprocess.Popen, found, timeout: float = 120) -> Path:
    """SIGKILL ``proc`` as soon as ``found()`` returns a path (a temporary output appeared)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hit = found()
        if hit is not None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return hit
        assert proc.poll() is None, "the process finished before it could be interrupted"
        time.sleep(0.01)
    raise AssertionError("no temporary output appeared")


@pytest.mark.slow
def test_sigkill_during_store_build_leaves_no_store_and_the_rerun_equals_a_clean_build(tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    for i in range(40):
        write_rgb(images / f"g{i}.png", size=160, seed=i)
    rows = [{"id": f"s{k}", "file": f"g{k % 40}.png", "y": float(k % 7)} for k in range(800)]
    pd.DataFrame(rows).to_csv(images / "catalog.csv", index=False)
    args = ["data.format=csv", f"data.catalog={images / 'catalog.csv'}", "data.targets=[y]", "data.crop=160",
            "data.chip_size=64", "model.task=regression"]
    stores = tmp_path / "stores"
    proc = subprocess.Popen([sys.executable, "-c", BUILD, *args, f"data.store_root={stores}"])
    part = kill_when(proc, lambda: next(iter(stores.glob(".*.part")), None) if stores.exists() else None)
    assert part.name.startswith(".") and not [p for p in stores.iterdir() if not p.name.startswith(".")]
    # the same command again: completes, removes the dead process's partial folder, equals a clean build
    rerun = subprocess.run([sys.executable, "-c", BUILD, *args, f"data.store_root={stores}"], capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    from geocnn.config import load_config
    from geocnn.domains import ingest

    want = ingest(load_config(overrides=[*args, f"data.store_root={tmp_path / 'clean'}"]), progress=False).root
    got = Path(rerun.stdout.strip().splitlines()[-1])
    assert got.name == want.name  # same content key
    np.testing.assert_array_equal(np.load(got / "chips.npy"), np.load(want / "chips.npy"))
    pd.testing.assert_frame_equal(pd.read_parquet(got / "index.parquet"), pd.read_parquet(want / "index.parquet"))
    assert [p.name for p in stores.iterdir()] == [got.name]  # nothing partial left


@pytest.mark.slow
def test_sigkill_during_map_export_leaves_no_map_and_the_rerun_equals_a_clean_export(tmp_path: Path) -> None:
    from geocnn.data.chips import ChipSpec
    from geocnn.synthetic.earth import make_scene
    from tests.helpers import write_bundle

    paths = make_scene(tmp_path / "scene", size_px=512, n_clusters=20, seed=2)
    with rasterio.open(paths["scene"]) as src:
        bands = list(src.descriptions)
    chips = ChipSpec(out_px=32, files=False, scenes=[str(paths["scene"])], chip_px=32, max_nodata_fraction=0.5)
    model = write_bundle(tmp_path / "bundle", chips, bands, domain="earth", task="regression", targets=("wealth",),
                         backbone="resnet10t", mean=0.1, std=0.05, dtype="float32")
    cmd = [sys.executable, "-m", "geocnn.cli", "map", "--model", str(model), "--stride", "16"]
    out = tmp_path / "out"
    proc = subprocess.Popen([*cmd, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: next(iter(out.glob(".prediction.tif.*.part*")), None) if out.exists() else None)
    assert not (out / "prediction.tif").exists()
    assert subprocess.run([*cmd, "--out", str(out)], capture_output=True, timeout=600).returncode == 0
    from geocnn.domains.earth_maps import map_scene
    from geocnn.inference.bundle import load_bundle

    map_scene(load_bundle(model), [str(paths["scene"])], tmp_path / "clean", 16)
    with rasterio.open(out / "prediction.tif") as a, rasterio.open(tmp_path / "clean" / "prediction.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.transform == b.transform and a.crs == b.crs
    names = sorted(p.name for p in out.iterdir())  # nothing partial left: the map, its PNG(s) and HTML, whole
    assert {"prediction.png", "prediction.tif"} <= set(names) and not [n for n in names if n.startswith(".")], names


@pytest.mark.slow
def test_sigkill_mid_epoch_then_the_same_command_resumes_and_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    """Two runs of `geocnn train` with the same seed: one killed mid-epoch and run again, one never stopped."""
    import json

    import mlflow
    from mlflow import MlflowClient

    from geocnn.synthetic.galaxies import make_galaxies
    from geocnn.training.resume import checkpoint_epoch, read_state

    catalog = make_galaxies(tmp_path / "syn", 300, 64, seed=3)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        f"name: resume\nseed: 11\ndata:\n  format: csv\n  catalog: {catalog}\n  targets: [morphology]\n"
        f"  crop: 64\n  chip_size: 64\n  store_root: {tmp_path / 'stores'}\nsplit:\n  method: stratified\n"
        "model:\n  backbone: resnet10t\n  task: classification\n  dropout: 0.2\n"
        "train:\n  epochs: 3\n  batch_size: 16\n  num_threads: 1\n  optimizer:\n    lr: 0.003\n"
        "augment:\n  tta_views: 2\ntracking:\n  register: never\n")
    cmd = [sys.executable, "-m", "geocnn.cli", "train", str(cfg), "--set"]
    from geocnn.config import load_config
    from geocnn.tracking.runs import setup

    experiment = setup(load_config(cfg))  # the MLflow store and experiment exist before two processes share them
    killed_out, clean_out = tmp_path / "killed", tmp_path / "clean"
    clean = subprocess.Popen([*cmd, f"output_dir={clean_out}", "--set", f"data.store_root={tmp_path / 'stores2'}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen([*cmd, f"output_dir={killed_out}"], stdout=log, stderr=subprocess.STDOUT)
    last = killed_out / "checkpoints" / "last.ckpt"

    def into_second_epoch() -> Path | None:
        if not last.exists():
            return None
        time.sleep(0.5)  # epoch 0 is checkpointed; epoch 1 (several seconds of steps) is under way
        return last

    try:
        kill_when(proc, into_second_epoch, timeout=300)
    finally:
        log.close()
        print((tmp_path / "killed.log").read_text()[-3000:])
    assert checkpoint_epoch(last) == 0, "the kill came after epoch 1 had finished, not during it"
    state = read_state(killed_out)
    assert state["complete"] is False and state["run_finished"] is False
    client = MlflowClient(mlflow.get_tracking_uri())
    assert client.get_run(state["run_id"]).info.status == "RUNNING"  # SIGKILL left it open

    rerun = subprocess.run([*cmd, f"output_dir={killed_out}"], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resumed an interrupted training from its last checkpoint at epoch 1" in rerun.stdout
    stdout, stderr = clean.communicate(timeout=600)
    assert clean.returncode == 0, stderr[-3000:]

    # The same final metrics and predictions as the run that never stopped (same seed, same batches).
    got = json.loads((killed_out / "metrics.json").read_text())
    want = json.loads((clean_out / "metrics.json").read_text())
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-5), key
    pd.testing.assert_frame_equal(pd.read_parquet(killed_out / "predictions.parquet"),
                                  pd.read_parquet(clean_out / "predictions.parquet"), atol=1e-5)

    # MLflow: one run, resumed, finished, every epoch logged exactly once with the uninterrupted run's values.
    runs = client.search_runs([experiment])
    assert len(runs) == 2  # the resumed run and the uninterrupted one, no orphan
    resumed = client.get_run(state["run_id"])
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["geocnn.resumed"] == "true" and resumed.data.tags["geocnn.resume_count"] == "1"
    assert resumed.data.tags["geocnn.resumed_at_epoch"] == "1"
    other = next(r for r in runs if r.info.run_id != state["run_id"])
    assert "geocnn.resumed" not in other.data.tags
    for name in ("val/loss", "train/loss"):
        a = sorted((m.step, m.value) for m in client.get_metric_history(state["run_id"], name))
        b = sorted((m.step, m.value) for m in client.get_metric_history(other.info.run_id, name))
        assert [s for s, _ in a] == [0, 1, 2] == [s for s, _ in b]
        np.testing.assert_allclose([v for _, v in a], [v for _, v in b], atol=1e-5)
    assert read_state(killed_out)["run_finished"] is True


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "run"])
def test_ctrl_c_mid_epoch_stops_in_seconds_with_one_line_and_the_run_killed_then_resumes(tmp_path: Path,
                                                                                          command: str) -> None:
    """SIGINT (Ctrl-C) during epoch 2 of `geocnn train` (no Prefect) and `geocnn run` (a Prefect flow)."""
    from mlflow import MlflowClient

    from geocnn.synthetic.galaxies import make_galaxies
    from geocnn.tracking.runs import tracking_uri
    from geocnn.training.resume import checkpoint_epoch, read_state

    catalog = make_galaxies(tmp_path / "syn", 300, 64, seed=3)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        f"name: ctrlc\nseed: 11\noutput_dir: {tmp_path / 'out'}\ndata:\n  format: csv\n  catalog: {catalog}\n"
        f"  targets: [morphology]\n  crop: 64\n  chip_size: 64\n  store_root: {tmp_path / 'stores'}\n"
        "split:\n  method: stratified\nmodel:\n  backbone: resnet10t\n  task: classification\n"
        "train:\n  epochs: 3\n  batch_size: 16\n  num_threads: 1\naugment:\n  tta_views: 1\n"
        "tracking:\n  register: never\n")
    cmd = [sys.executable, "-m", "geocnn.cli", command, str(cfg)]
    out = tmp_path / "out"
    last = out / "checkpoints" / "last.ckpt"
    # as from a terminal: Ctrl-C delivered (a shell's background job, e.g. CI's, would start it with SIGINT ignored)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    err_lines: list[tuple[float, str]] = []
    out_lines: list[str] = []
    readers = [threading.Thread(target=lambda: err_lines.extend((time.monotonic(), line) for line in proc.stderr)),
               threading.Thread(target=lambda: out_lines.extend(proc.stdout))]
    for reader in readers:  # both pipes drained while it runs: a full pipe must not stall the child
        reader.start()

    def into_second_epoch() -> Path | None:
        if not last.exists():
            return None
        time.sleep(0.5)
        return last

    deadline = time.monotonic() + 300
    while into_second_epoch() is None:
        assert proc.poll() is None, err_lines[-20:]
        assert time.monotonic() < deadline, "training never reached epoch 2"
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    took = time.monotonic() - sent
    for reader in readers:
        reader.join(timeout=30)
    stdout, stderr = "".join(out_lines), "".join(line for _, line in err_lines)
    said = next((t - sent for t, line in err_lines if "interrupted" in line), None)
    print(f"Ctrl-C: message after {said} s, exit after {took:.1f} s")
    assert took < 15, f"Ctrl-C took {took:.1f} s to stop (message after {said} s)"  # 0.2-3.4 s measured
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr[-3000:]
    if command == "train":  # not a terminal: one line per epoch (Prefect's log prefixes them under `run`)
        assert any(line.startswith("epoch 1/3  train/loss ") and line.endswith(" s") for line in stderr.splitlines())
    lines = [line for line in stderr.splitlines() if "interrupted" in line]
    assert lines == ["interrupted at epoch 1; rerun the same command to resume"], stderr[-3000:]
    assert checkpoint_epoch(last) == 0
    state = read_state(out)
    client = MlflowClient(tracking_uri())  # this test's store (another test may have set MLflow's global URI)
    assert client.get_run(state["run_id"]).info.status == "KILLED"  # MLflow's status of an interrupted run

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resumed an interrupted training from its last checkpoint at epoch 1" in rerun.stdout
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["geocnn.resumed_at_epoch"] == "1"
