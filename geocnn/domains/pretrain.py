"""`geocnn pretrain`: unlabeled chips -> self-supervised encoder -> encoder bundle (safetensors + card) + MLflow."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless; must precede the pyplot import

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from geocnn.atomic import atomic_dir  # noqa: E402
from geocnn.config import AnyExperiment, EarthExperiment, GalaxyExperiment, PretrainConfig  # noqa: E402
from geocnn.data.catalog import ID, LAT, LON, Catalog  # noqa: E402
from geocnn.data.chips import ChipSpec, sample_points  # noqa: E402
from geocnn.data.sources.galaxy_tables import read_unlabeled  # noqa: E402
from geocnn.data.ssl_views import view_plan  # noqa: E402
from geocnn.data.store import ChipStore, band_stats, build_store  # noqa: E402
from geocnn.domains.earth import EarthDomain  # noqa: E402
from geocnn.domains.galaxy import GalaxyDomain  # noqa: E402
from geocnn.errors import GeocnnError  # noqa: E402
from geocnn.tracking import encoders as tracking  # noqa: E402
from geocnn.training.pretrain import bank_size, pretrain_encoder  # noqa: E402
from geocnn.training.ranks import is_global_zero  # noqa: E402

ENCODER_DIR = "encoder"
ENCODER_FILE = "encoder.safetensors"
ENCODER_CARD = "encoder.json"
LOSS_PLOT = "loss.png"
CARD_FORMAT = 1


@dataclass
class PretrainResult:
    """Where the encoder bundle is, its card, the per-epoch loss and the MLflow run."""

    encoder_dir: Path
    card: dict[str, Any]
    loss_curve: list[float]
    run_id: str | None = None
    store: Path | None = None

    @property
    def weights(self) -> Path:
        """The safetensors file (``model.weights`` accepts it, or the folder)."""
        return self.encoder_dir / ENCODER_FILE


def settings(cfg: AnyExperiment) -> PretrainConfig:
    """The experiment's pretrain section (defaults when it has none)."""
    return cfg.pretrain or PretrainConfig()


def out_dir(cfg: AnyExperiment, out: str | Path | None = None) -> Path:
    """The output folder: ``out``, else pretrain.out with '{name}' expanded."""
    return Path(out) if out else Path(settings(cfg).out.format(name=cfg.name))


# --------------------------------------------------------------------------------------------- unlabeled data
def subset(catalog: Catalog, max_images: int | None, seed: int) -> Catalog:
    """At most ``max_images`` rows (a seeded random subset, catalog order kept)."""
    if max_images is None or len(catalog) <= max_images:
        return catalog
    keep = np.sort(np.random.default_rng(seed).choice(len(catalog), max_images, replace=False))
    return Catalog(catalog.frame.iloc[keep].reset_index(drop=True), [], catalog.source)


def unlabeled_store(cfg: AnyExperiment, progress: bool = True) -> tuple[ChipStore, str]:
    """The chips to pretrain on and a description of their source: galaxies: the catalog's/folder's images; Earth:
    chips sampled uniformly across earth.scenes (as two-stage stage 1 does), or with data.tiles the tiles."""
    p = settings(cfg)
    if isinstance(cfg, GalaxyExperiment):
        domain = GalaxyDomain()
        cfg = domain.prepare(cfg)
        catalog = subset(read_unlabeled(cfg.data), p.max_images, cfg.seed)
        store = build_store(catalog, domain.chip_spec(cfg), cfg.data.store_root, progress=progress,
                            shard_size=cfg.orchestration.ingest_shard_size)
        return store, catalog.source
    assert isinstance(cfg, EarthExperiment)
    earth = EarthDomain()
    cfg = earth.prepare(cfg)
    spec = earth.chip_spec(cfg).model_copy(update={"label_raster": None})
    if cfg.data.tiles:
        survey = earth.catalog(cfg)
        catalog = subset(Catalog(survey.frame.drop(columns=survey.targets), [], survey.source), p.max_images,
                         cfg.seed)
        source = f"tiles of {survey.source}"
    elif cfg.earth.scenes:
        lon, lat = sample_points(spec, p.chips, cfg.seed)
        frame = pd.DataFrame({ID: [f"p{i}" for i in range(len(lon))], LAT: lat, LON: lon})
        spec = ChipSpec.model_validate({**spec.model_dump(), "files": False, "per_sample": 1})
        source = "chips sampled across " + ", ".join(cfg.earth.scenes)
        catalog = Catalog(frame, [], source)
    else:
        raise GeocnnError("earth.scenes / data.tiles: pretraining needs scenes to sample chips from, or tiles")
    store = build_store(catalog, spec, cfg.data.store_root, progress=progress,
                        shard_size=cfg.orchestration.ingest_shard_size)
    return store, source


# ------------------------------------------------------------------------------------------------ the bundle
def sha256_of(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def plot_loss(curve: list[float], method: str, path: Path) -> Path:
    """The per-epoch loss curve as a PNG."""
    fig, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
    try:
        ax.plot(np.arange(1, len(curve) + 1), curve, marker="o")
        ax.set(xlabel="epoch", ylabel=f"{method} loss", title=f"self-supervised pretraining ({method})")
        ax.grid(alpha=0.3)
        fig.savefig(path, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path


def write_encoder(folder: Path, state: dict[str, Any], card: dict[str, Any], curve: list[float]) -> dict[str, Any]:
    """Write ``folder`` whole or not at all: encoder.safetensors, encoder.json (with the file's sha256), loss.png."""
    with atomic_dir(folder) as tmp:
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp / ENCODER_FILE),
                  metadata={"format": "pt", "arch": str(card["arch"])})
        card = {**card, "sha256": sha256_of(tmp / ENCODER_FILE)}
        (tmp / ENCODER_CARD).write_text(json.dumps(card, indent=2, default=str))
        plot_loss(curve, str(card["method"]), tmp / LOSS_PLOT)
    return card


# ---------------------------------------------------------------------------------------------- orchestration
def pretrain(cfg: AnyExperiment, out: str | Path | None = None, progress: bool = True) -> PretrainResult:
    """Pretrain the experiment's encoder (model.backbone) self-supervised on its images without labels.

    Writes ``<out>/encoder/`` (encoder.safetensors: the plain timm state dict of ``timm.create_model(backbone,
    num_classes=0, in_chans=C)``; encoder.json: the card; loss.png) and logs an MLflow run ``pretrain-<name>``
    (params, per-epoch ``pretrain/loss``, the folder as artifacts) when tracking is enabled. Use the result as
    ``model.weights: <out>/encoder``.
    """
    p = settings(cfg)
    arch = cfg.model.backbone
    if arch == "auto":
        raise GeocnnError("model.backbone: pretraining needs the architecture to train; set model.backbone to a timm "
                          "model (e.g. resnet18)")
    started = time.time()
    store, source = unlabeled_store(cfg, progress)
    chips = store.chips
    n = int(chips.shape[0])
    rows = np.arange(n)
    mean, std = band_stats(chips, rows)
    plan = view_plan(cfg.domain, p.views)
    folder = out_dir(cfg, out) / ENCODER_DIR
    zero = is_global_zero()
    run_id = None
    batch = min(p.batch_size, n)
    if cfg.tracking.enabled and zero:
        params = {"method": p.method, "backbone": arch, "epochs": p.epochs, "batch_size": batch, "n_images": n,
                  "lr": p.lr, "optimizer": p.optimizer, "temperature": p.temperature, "domain": cfg.domain,
                  "memory_bank_size": bank_size(p.memory_bank_size, n, batch) if p.method == "moco" else 0,
                  "momentum": p.momentum, "in_chans": int(chips.shape[1]), "chip_size": int(chips.shape[-1]),
                  "bands": ",".join(store.bands), "source": source[:500], "store": str(store.root),
                  **{f"views.{k}": v for k, v in plan.to_dict().items()}}
        run_id = tracking.start_pretrain_run(cfg, params)
    try:
        fitted = pretrain_encoder(store.root / "chips.npy", rows, arch, mean, std, p, cfg.train, plan, cfg.seed,
                                  [tracking.EpochLoss(run_id)] if run_id else None, progress)
        seconds = time.time() - started
        card = {"kind": "geocnn-encoder", "format": CARD_FORMAT, "arch": arch, "in_chans": int(chips.shape[1]),
                "bands": store.bands, "dtype": str(store.meta["dtype"]), "mean": mean, "std": std,
                "method": p.method, "epochs": len(fitted.loss_curve), "loss_curve": fitted.loss_curve,
                "data": {"domain": cfg.domain, "source": source, "n_images": n, "chip_size": int(chips.shape[-1]),
                         "store": str(store.root)},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": round(seconds, 3),
                "license": None, "views": plan.to_dict(), "memory_bank_size": fitted.bank, "device": fitted.device,
                "experiment": cfg.name, "config": p.model_dump()}
        if zero:
            card = write_encoder(folder, fitted.encoder.state_dict(), card, fitted.loss_curve)
        if run_id:
            tracking.finish_pretrain_run(run_id, folder, {"pretrain/final_loss": fitted.loss_curve[-1],
                                                          "pretrain/first_loss": fitted.loss_curve[0],
                                                          "pretrain/seconds": seconds})
    except BaseException as exc:
        if run_id:
            tracking.fail_pretrain_run(run_id, isinstance(exc, KeyboardInterrupt))
        raise
    return PretrainResult(encoder_dir=folder, card=card, loss_curve=fitted.loss_curve, run_id=run_id,
                          store=store.root)
