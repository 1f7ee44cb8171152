"""Data-parallel training: batches sharded by rank (the same optimisation steps as one process), validation
gathered across ranks, and a 2-process CPU (gloo) run that equals the single-process run with one set of outputs,
one MLflow run and one registered version."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from geocnn.data.datamodule import EpochShuffledBatches, rank_share
from geocnn.errors import GeocnnError
from geocnn.synthetic.galaxies import make_galaxies
from geocnn.training.fit import check_global_batch
from geocnn.training.module import gather_shares

PROJECT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"


def epoch(n: int, batch: int, drop_last: bool, rank: int = 0, world: int = 1, seed: int = 5) -> list[list[int]]:
    sampler = EpochShuffledBatches(n, batch, seed, drop_last, rank=rank, world=world)
    sampler.set_epoch(3)
    return list(sampler)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_the_ranks_slices_of_each_global_batch_are_the_single_process_batch(world: int) -> None:
    single = epoch(50, 12, drop_last=True)
    ranks = [epoch(50, 12, drop_last=True, rank=r, world=world) for r in range(world)]
    assert all(len(r) == len(single) == 4 for r in ranks)  # the same number of steps on every rank
    for k, batch in enumerate(single):
        parts = [r[k] for r in ranks]
        assert len({len(p) for p in parts}) == 1  # equal slices: DDP's gradient mean is the global batch's mean
        union = Counter(i for p in parts for i in p)
        assert set(union) == set(batch)  # exactly the samples of the single-process step k ...
        assert sum(union.values()) - len(batch) == (-len(batch)) % world  # ... plus padding only where 12 % world


def test_one_batch_smaller_than_the_global_batch_covers_every_row_once_plus_padding() -> None:
    ranks = [epoch(7, 16, drop_last=False, rank=r, world=2) for r in range(2)]
    rows = [i for r in ranks for b in r for i in b]
    assert sorted(set(rows)) == list(range(7)) and len(rows) == 8  # 7 rows once, one padded duplicate
    assert [len(r[0]) for r in ranks] == [4, 4]


@pytest.mark.parametrize("n,world", [(10, 2), (11, 2), (11, 4), (3, 4)])
def test_validation_shares_gather_back_to_every_row_in_order(n: int, world: int) -> None:
    shares = [rank_share(n, r, world) for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # equal shares: the same number of validation batches per rank
    gathered = torch.tensor(shares)[..., None].expand(-1, -1, 3)  # what all_gather returns: (world, per rank, ...)
    assert gather_shares(gathered, n)[:, 0].tolist() == list(range(n))


def test_the_global_batch_must_split_evenly_over_the_processes() -> None:
    check_global_batch(32, 4)
    with pytest.raises(GeocnnError, match="train.batch_size=30 .* multiple of 4"):
        check_global_batch(30, 4)


# ------------------------------------------------------------------------------------------ real processes
@pytest.fixture(scope="module")
def galaxies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_galaxies(tmp_path_factory.mktemp("syn"), 160, 48, seed=3)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, galaxies: Path) -> Path:
    """The single-process run the DDP runs are compared with (3 epochs), once per test process."""
    tmp = tmp_path_factory.mktemp("single")
    train(tmp, galaxies, tmp / "stores", "train.epochs=3")
    return tmp


def train(tmp: Path, catalog: Path, stores: Path, *extra: str, launcher: list[str] | None = None,
          ) -> subprocess.CompletedProcess:
    """`geocnn train` of a tiny LayerNorm model (no batch norm, augmentation or dropout: DDP must match exactly)."""
    sets = ddp_sets(tmp, catalog, stores, *extra)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "GEOCNN_MLFLOW_ARTIFACTS": str(tmp / "artifacts")}
    cmd = [*(launcher or [sys.executable]), "-m", "geocnn.cli", "train", str(PROJECT / "configs/galaxy_demo.yaml"),
           *[a for s in sets for a in ("--set", s)]]
    tmp.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def ddp_sets(tmp: Path, catalog: Path, stores: Path, *extra: str) -> list[str]:
    """The overrides of the tiny run."""
    return ["name=ddp_test", f"output_dir={tmp / 'run'}", f"data.store_root={stores}", "data.format=csv",
            f"data.catalog={catalog}", "data.targets=[morphology]", "data.crop=40", "data.chip_size=32",
            "split.method=stratified", "split.val_fraction=0.25", "split.test_fraction=0.25",
            "model.backbone=test_convnext", "model.task=classification", "model.dropout=0", "train.epochs=2",
            "train.batch_size=16", "train.eval_batch_size=16", "train.optimizer.lr=0.003", "train.num_threads=1",
            "augment.rotate=false", "augment.flip=false", "augment.translate=0", "augment.zoom=0",
            "augment.brightness=0", "augment.tta_views=1", "tracking.register=always",
            "tracking.registered_model=ddp_test", *extra]


def one_run_one_version(tmp: Path) -> list[float]:
    """Asserts one MLflow run and one registered version; returns the run's per-epoch val/loss."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [str(v.version) for v in client.search_model_versions("name='ddp_test'")] == ["1"]
    return [m.value for m in client.get_metric_history(runs[0].info.run_id, "val/loss")]


@pytest.mark.slow
def test_two_cpu_processes_give_the_single_process_metrics_with_one_set_of_outputs(tmp_path: Path, galaxies: Path,
                                                                                    single: Path) -> None:
    stores = tmp_path / "stores"
    ddp = train(tmp_path / "ddp", galaxies, stores, "train.epochs=3", "train.devices=2", "train.strategy=ddp",
                "train.device=cpu")
    a = json.loads((single / "run/metrics.json").read_text())
    b = json.loads((tmp_path / "ddp/run/metrics.json").read_text())
    # Same global batches, gradient mean over equal slices, whole-set validation: equal up to float summation
    # order (measured: 1.3e-7). Tolerance 1e-5 absolute on every validation and test metric.
    assert a.keys() == b.keys() and any(k.startswith("validation/") for k in a)
    assert {k: b[k] for k in a} == pytest.approx(a, abs=1e-5)
    assert one_run_one_version(tmp_path / "ddp") == pytest.approx(one_run_one_version(single), abs=1e-5)
    # one set of outputs: the same files as the single-process run, nothing of another rank
    files = {p.relative_to(tmp_path / "ddp").as_posix() for p in (tmp_path / "ddp").rglob("*") if p.is_file()}
    want = {p.relative_to(single).as_posix() for p in single.rglob("*") if p.is_file()}
    assert {f for f in files if not f.startswith(("artifacts/", "stores/"))} == \
        {f for f in want if not f.startswith(("artifacts/", "stores/"))}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ddp/run/predictions.parquet"),
                                  pd.read_parquet(single / "run/predictions.parquet"), atol=1e-5)
    # rank 1 prints nothing: the summary appears once
    assert ddp.stdout.count("Held-out metrics") == 1


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_torchrun_launch_equals_the_single_process_run(tmp_path: Path, galaxies: Path, single: Path) -> None:
    # both ranks start at once: the store is built once (the other waits on its lock)
    done = train(tmp_path / "torchrun", galaxies, tmp_path / "stores2", "train.epochs=3", "train.devices=2",
                 "train.device=cpu", launcher=[str(TORCHRUN), "--standalone", "--nproc_per_node", "2"])
    a = json.loads((single / "run/metrics.json").read_text())
    b = json.loads((tmp_path / "torchrun/run/metrics.json").read_text())
    assert {k: b[k] for k in a} == pytest.approx(a, abs=1e-5)
    one_run_one_version(tmp_path / "torchrun")
    assert len([p for p in (tmp_path / "stores2").iterdir() if not p.name.startswith(".")]) == 1
    assert done.stdout.count("Held-out metrics") == 1


@pytest.mark.slow
def test_an_interrupted_ddp_run_resumes_in_the_same_mlflow_run_and_ends_as_one_process_would(
        tmp_path: Path, galaxies: Path, single: Path) -> None:
    stores = tmp_path / "stores"
    ddp = ["train.epochs=3", "train.devices=2", "train.strategy=ddp", "train.device=cpu"]
    run = tmp_path / "ddp"
    # Ctrl-C in a terminal: SIGINT to the whole process group (rank 0 and the rank Lightning started) after epoch 1
    cmd = [sys.executable, "-c", "import sys, signal, os; signal.signal(signal.SIGINT, signal.SIG_DFL); "
           "os.execv(sys.argv[1], sys.argv[1:])", sys.executable]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{run / 'mlflow.db'}",
           "GEOCNN_MLFLOW_ARTIFACTS": str(run / "artifacts")}
    run.mkdir()
    proc = subprocess.Popen([*cmd, "-m", "geocnn.cli", "train", str(PROJECT / "configs/galaxy_demo.yaml"),
                             *[a for s in ddp_sets(run, galaxies, stores, *ddp) for a in ("--set", s)]],
                            cwd=run, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (run / "run/checkpoints/last.ckpt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=300) == 130
    done = train(run, galaxies, stores, *ddp)
    assert "Resumed an interrupted training from its last checkpoint at epoch 1" in done.stdout
    a = json.loads((single / "run/metrics.json").read_text())
    b = json.loads((run / "run/metrics.json").read_text())
    assert {k: b[k] for k in a} == pytest.approx(a, abs=1e-5)  # measured: 3.1e-7
    assert len(one_run_one_version(run)) == 3  # one run (resumed, not a second one), every epoch logged once
