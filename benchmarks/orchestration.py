"""Orchestration and tracking overhead: the Prefect flow with MLflow logging vs the bare library run.

The same galaxy experiment (synthetic galaxies, same seed, chip store already built) runs as
- bare: `geocnn.domains.run_experiment` with tracking off (no Prefect, no MLflow);
- orchestrated: `pipelines.experiment.experiment_flow` (Prefect tasks, cached ingest, artifacts) logging params, per-epoch
  metrics, plots, tables and the model to MLflow (SQLite) and registering a version.
Each is run twice, alternating; the best of two is compared. Prefect's temporary API server starts once per
process (about 10 s); that one-time start is reported separately (a served deployment or `PREFECT_API_URL`
does not pay it per run).

    python benchmarks/orchestration.py [--epochs 12] [--n 800]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, row  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--n", type=int, default=800, help="synthetic galaxies")
    p.add_argument("--device", default="auto", help="train.device: auto, cpu or cuda")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ["GEOCNN_MLFLOW_ARTIFACTS"] = str(tmp / "artifacts")
    os.environ.setdefault("PREFECT_HOME", str(tmp / "prefect"))

    from geocnn.config import load_config
    from geocnn.domains import ingest, run_experiment
    from geocnn.inference.predict import pick_device
    from geocnn.synthetic.galaxies import make_galaxies

    print(f"machine: {machine(str(pick_device(args.device)))}")
    catalog = make_galaxies(tmp / "syn", args.n, 64, seed=0)
    base = [f"data.catalog={catalog}", "data.format=csv", "data.targets=[morphology]", "data.crop=64",
            "data.chip_size=64", f"data.store_root={tmp / 'stores'}", "model.backbone=resnet18",
            f"train.epochs={args.epochs}", "train.batch_size=32", "augment.tta_views=2", "name=bench",
            f"train.device={args.device}"]
    ingest(load_config(overrides=base), progress=False)  # both runs reuse this store

    start = time.perf_counter()
    from prefect import flow

    @flow
    def hello() -> int:
        return 1

    hello()
    server_start = time.perf_counter() - start
    from pipelines.experiment import experiment_flow

    bare, orchestrated = [], []
    for i in range(2):
        start = time.perf_counter()
        run_experiment(load_config(overrides=[*base, f"output_dir={tmp / f'bare{i}'}", "tracking.enabled=false"]),
                       progress=False)
        bare.append(time.perf_counter() - start)
        start = time.perf_counter()
        experiment_flow(None, [*base, f"output_dir={tmp / f'flow{i}'}"], progress=False)
        orchestrated.append(time.perf_counter() - start)
        print(f"round {i + 1}: bare {bare[-1]:.1f} s, flow + MLflow {orchestrated[-1]:.1f} s", flush=True)
    b, o = min(bare), min(orchestrated)
    print(f"\nresnet18, 64 px, {args.n} galaxies, {args.epochs} epochs\n")
    print(row("run", "wall s (best of 2)", "extra"))
    print(row("---", "---:", "---:"))
    print(row("bare library run (no Prefect, no MLflow)", f"{b:.1f}", ""))
    print(row("Prefect flow + MLflow tracking + registration", f"{o:.1f}", f"{(o - b) / b:+.1%}"))
    print(row("one-time start of Prefect's temporary API server", f"{server_start:.1f}", ""))
    print("\ntarget: under 5 % extra for a run of at least a minute")


if __name__ == "__main__":
    main()
