"""Fan-out on Prefect task runners: independent units side by side on a local Dask cluster vs one after another.

Three measurements, each in this one run:
- maps: 4 generated scenes mapped with one model, one task per scene, on a 2-worker local Dask cluster vs
  sequentially (speed-up; its ceiling is the number of cores, and each worker's torch gets cores / workers threads);
- folds: the k folds of an out-of-fold Earth experiment trained as parallel tasks vs one after another (same seeds:
  the metrics must agree);
- overhead: one small unit (a sleep of --unit-s seconds, default 60: "a one-minute run") through the Dask and Ray
  runners vs calling it directly; the cluster start-up is reported apart (paid once per flow run).

    python benchmarks/fanout.py [--scenes 4] [--size 1024] [--folds 2] [--unit-s 60] [--skip-ray]
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


def sleep_unit(seconds: float) -> float:
    """A unit that does nothing but take ``seconds`` (so the runner's own cost is what differs)."""
    time.sleep(seconds)
    return seconds


def warm_imports(_: object) -> bool:
    """A unit that imports what fold and map units use (a worker pays these imports once, at its first unit)."""
    import geocnn.domains.base  # noqa: F401
    import geocnn.domains.earth_maps  # noqa: F401

    return True


def bench_maps(tmp: Path, n_scenes: int, size: int, workers: int) -> list[str]:
    """Map n generated scenes sequentially and on a local Dask cluster; compare wall time and the maps."""
    import numpy as np
    import rasterio

    from geocnn.config import OrchestrationConfig
    from geocnn.data.chips import ChipSpec
    from geocnn.domains.earth_maps import map_scenes
    from geocnn.inference.bundle import Preprocessing, save_bundle
    from geocnn.models.network import GeoNet, NetSpec
    from geocnn.synthetic.earth import make_scene
    from pipelines.fanout import mapper_for

    scenes = [str(make_scene(tmp / f"scene{i}", size_px=size, n_clusters=12, seed=i)["scene"]) for i in range(n_scenes)]
    with rasterio.open(scenes[0]) as src:
        bands = list(src.descriptions)
    chips = ChipSpec(out_px=32, files=False, scenes=scenes, chip_px=32, max_nodata_fraction=0.5)
    spec = NetSpec(backbone="resnet10t", in_chans=len(bands), task="regression", targets=["wealth"],
                   mean=[0.1] * len(bands), std=[0.1] * len(bands))
    pre = Preprocessing(domain="earth", chips=chips, bands=bands, dtype="float32", mean=spec.mean, std=spec.std,
                        tta_views=1, task="regression", targets=["wealth"], classes=[])
    bundle = save_bundle(GeoNet(spec, weights="random"), tmp / "bundle", pre)
    start = time.perf_counter()
    seq = map_scenes(bundle, scenes, tmp / "maps_seq", stride_px=16, device="cpu")
    t_seq = time.perf_counter() - start
    start = time.perf_counter()
    with mapper_for(OrchestrationConfig(task_runner="dask", workers=workers)) as mapper:
        mapper.map("warm-up", sleep_unit, [0.0] * workers)  # the cluster starts at first use
        t_up = time.perf_counter() - start
        start = time.perf_counter()  # each worker imports torch, timm, rasterio and geocnn with its first unit
        map_scenes(bundle, scenes[:workers], tmp / "maps_warm", stride_px=16, device="cpu", mapper=mapper)
        t_warm = time.perf_counter() - start
        start = time.perf_counter()
        par = map_scenes(bundle, scenes, tmp / "maps_dask", stride_px=16, device="cpu", mapper=mapper)
        t_par = time.perf_counter() - start
    with rasterio.open(seq["map_tif"]) as a, rasterio.open(par["map_tif"]) as b:
        diff = float(np.nanmax(np.abs(a.read() - b.read())))
    return [row(f"map {n_scenes} scenes ({size} px, resnet10t)", f"{t_seq:.1f} s", f"{t_par:.1f} s",
                f"{t_seq / t_par:.2f}x", f"cluster start {t_up:.1f} s, first {workers} units (worker imports) "
                f"{t_warm:.1f} s, both once per cluster; max map difference {diff:.1e}")]


def bench_folds(tmp: Path, folds: int, workers: int, epochs: int) -> list[str]:
    """An out-of-fold Earth experiment with its folds sequential and as parallel tasks; same metrics expected."""
    from geocnn import fanout
    from geocnn.config import load_config
    from geocnn.domains import domain_for
    from geocnn.domains.base import run_experiment
    from pipelines.fanout import mapper_for

    config = Path(__file__).resolve().parents[1] / "configs" / "poverty_demo.yaml"

    cores = os.cpu_count() or 1
    threads = {"sequential": cores, "dask": max(1, cores // workers)}  # each run uses every core

    def run(runner: str) -> tuple[float, dict]:
        cfg = load_config(config, [f"output_dir={tmp / ('folds_' + runner)}", f"data.store_root={tmp / 'stores'}",
                                   "earth.synthetic_size=1024", "earth.synthetic_clusters=400",
                                   "two_stage.enabled=false", "earth.chips_per_cluster=2", f"train.epochs={epochs}",
                                   "maps.enabled=false", f"split.folds={folds}", "split.val_fraction=0.2",
                                   f"train.num_threads={threads[runner]}",
                                   "tracking.enabled=false", f"orchestration.task_runner={runner}",
                                   f"orchestration.workers={workers}"])
        domain_for(cfg).ingest(domain_for(cfg).prepare(cfg), progress=False)
        with mapper_for(cfg.orchestration) as mapper, fanout.using(mapper):
            mapper.map("warm-up", warm_imports, [0] * workers)  # a started cluster whose workers imported geocnn
            start = time.perf_counter()
            summary = run_experiment(cfg, domain_for(cfg), progress=False)
            return time.perf_counter() - start, summary["metrics"]

    t_seq, m_seq = run("sequential")
    t_par, m_par = run("dask")
    worst = max(abs(m_seq[k] - m_par[k]) for k in m_seq if k.startswith("test/"))
    return [row(f"{folds} folds (resnet10t, 400 clusters x 2 chips, {epochs} epochs)", f"{t_seq:.1f} s",
                f"{t_par:.1f} s",
                f"{t_seq / t_par:.2f}x", f"test r2 {m_seq['test/r2']:.4f} vs {m_par['test/r2']:.4f}; largest test "
                f"metric difference {worst:.1e}")]


def bench_overhead(unit_s: float, runners: list[str]) -> list[str]:
    """One unit of ``unit_s`` seconds through each runner vs a direct call: the runner's cost per unit."""
    from geocnn.config import OrchestrationConfig
    from pipelines.fanout import mapper_for

    rows = []
    start = time.perf_counter()
    sleep_unit(unit_s)
    direct = time.perf_counter() - start
    for runner in runners:
        start = time.perf_counter()
        with mapper_for(OrchestrationConfig(task_runner=runner, workers=2)) as mapper:
            mapper.map("warm-up", sleep_unit, [0.0, 0.0])  # the cluster starts and its workers import at first use
            up = time.perf_counter() - start
            start = time.perf_counter()
            mapper.map("unit", sleep_unit, [unit_s, unit_s])  # two units: a runner with one item runs it in place
            took = time.perf_counter() - start
        over = took - direct
        rows.append(row(f"one {unit_s:.0f} s unit on {runner} (2 side by side)", f"{direct:.2f} s", f"{took:.2f} s",
                        f"+{100 * over / direct:.2f} %", f"runner start with worker imports {up:.1f} s, once per flow "
                        "run"))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=4)
    p.add_argument("--size", type=int, default=1024, help="side of each generated scene in pixels")
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=8, help="epochs of each fold's training")
    p.add_argument("--unit-s", type=float, default=60.0)
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--only", choices=["maps", "folds", "overhead"], default=None)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    os.environ.setdefault("PREFECT_HOME", str(tmp / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    print(f"machine: {machine('cpu')}")
    print(row("work", "sequential", f"{args.workers}-worker runner", "speed-up / overhead", "notes"))
    print(row("---", "---", "---", "---", "---"))
    if args.only in (None, "maps"):
        print("\n".join(bench_maps(tmp, args.scenes, args.size, args.workers)), flush=True)
    if args.only in (None, "folds"):
        print("\n".join(bench_folds(tmp, args.folds, args.workers, args.epochs)), flush=True)
    if args.only in (None, "overhead"):
        print("\n".join(bench_overhead(args.unit_s, ["dask"] + ([] if args.skip_ray else ["ray"]))), flush=True)
    print(f"ceiling on this machine: {os.cpu_count()} cores -> at most {min(args.workers, os.cpu_count() or 1)}x")


if __name__ == "__main__":
    main()
