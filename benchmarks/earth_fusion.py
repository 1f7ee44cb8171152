"""Does the image model add to night lights (Yeh et al. 2020: MS+NL beats NL alone)? Out of country, same folds.

On the generated Earth scene (4 countries, 300 survey clusters; wealth drives roofs, roads and lights, so both the
daytime image and the night lights carry signal), leave-one-country-out, every cluster scored once out of fold:
- direct: the CNN regresses wealth from the daytime bands;
- direct + NL: the night-light raster fused as an extra input band (earth.layers);
- two-stage: Jean et al. (CNN on night lights over many chips, ridge on cluster-averaged features);
each from scratch, from ImageNet EfficientNet-Lite0, and from a `geocnn pretrain` encoder of the scene's chips;
against the night-light baselines of the same runs (ridge on mean light; gradient boosting on light at 4 radii).

    python benchmarks/earth_fusion.py [--starts scratch imagenet ssl] [--epochs 8] [--work DIR]

Prints a markdown table (pooled out-of-fold r2, mean per-country r2) and writes benchmarks/results/earth_fusion.csv.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, row  # noqa: E402
from benchmarks.label_efficiency import ARCH, LITE, dataset_overrides, pretrain_encoder  # noqa: E402
from geocnn.config import load_config  # noqa: E402
from geocnn.domains import run_experiment  # noqa: E402

VARIANTS = {"direct": [], "direct + NL": ["earth.layers=[{nl}]"], "two-stage": ["two_stage.enabled=true",
                                                                                 "two_stage.stage1_chips=2000"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--starts", nargs="+", default=["scratch", "imagenet", "ssl"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--ssl-epochs", type=int, default=30)
    p.add_argument("--encoder", type=Path, default=None, help="A pretrained encoder folder to reuse for 'ssl'.")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--work", type=Path, default=None)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="geocnn-fusion-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    base = [o for o in dataset_overrides("synthetic_earth", work, Path("."), 32) if not o.startswith("split.")]
    common = ["name=fusion", f"data.store_root={work / 'stores'}", "train.batch_size=64", "tracking.enabled=false",
              "split.method=grouped", "split.folds=groups", f"train.epochs={args.epochs}", *base]
    nl = work / "synthetic_earth" / "s1024_n300_seed0" / "nightlights.tif"
    common.append(f"earth.baseline_raster={nl}")
    encoder = args.encoder
    if "ssl" in args.starts and encoder is None:
        encoder, seconds = pretrain_encoder("synthetic_earth", common, work, args.ssl_epochs)
        print(f"self-supervised encoder: {encoder} ({seconds:.0f} s)", flush=True)
    print(f"# Earth fusion, out of country ({machine('cpu')})", flush=True)
    print(row("model", "start", "pooled r2", "mean country r2", "baseline ridge NL r2", "baseline GBM NL r2",
              "seconds"))
    print(row(*["---"] * 7), flush=True)
    records = []
    for variant in args.variants:
        for start in args.starts:
            weights = {"scratch": "random", "imagenet": LITE, "ssl": str(encoder)}[start]
            transfer = "from_scratch" if start == "scratch" else "full"
            lr = 0.002 if start == "scratch" else 0.001
            extra = [o.format(nl=nl) for o in VARIANTS[variant]]
            out = work / "runs" / f"{variant.replace(' ', '').replace('+', '_')}_{start}"
            cfg = load_config(overrides=[*common, *extra, f"output_dir={out}", f"model.backbone={ARCH}",
                                         f"model.weights={weights}", f"model.transfer={transfer}",
                                         f"train.optimizer.lr={lr}"])
            t0 = time.perf_counter()
            m = run_experiment(cfg, progress=False)["metrics"]
            seconds = time.perf_counter() - t0
            rec = {"model": variant, "start": start, "r2": m["test/r2"],
                   "mean_country_r2": m.get("test/group_mean/pearson_r2", float("nan")),
                   "baseline_nightlights_r2": m.get("baseline_nightlights/r2", float("nan")),
                   "baseline_gbm_r2": m.get("baseline_gbm/r2", float("nan")), "seconds": seconds}
            records.append(rec)
            print(row(variant, start, f"{rec['r2']:.3f}", f"{rec['mean_country_r2']:.3f}",
                      f"{rec['baseline_nightlights_r2']:.3f}", f"{rec['baseline_gbm_r2']:.3f}", f"{seconds:.0f}"),
                  flush=True)
    csv = args.out / "earth_fusion.csv"
    pd.DataFrame(records).to_csv(csv, index=False)
    print(f"\nwrote {csv}")


if __name__ == "__main__":
    main()
