"""The galaxy domain: cut-out catalogs (or generated galaxies) -> morphology; a montage of test galaxies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geocnn.config import GalaxyExperiment, derive
from geocnn.data.catalog import Catalog, name_classes
from geocnn.data.chips import ChipSpec
from geocnn.data.fingerprint import files_under
from geocnn.data.sources.galaxy_tables import read_class_names, read_galaxy_catalog
from geocnn.data.sources.images import folder_of
from geocnn.data.store import ChipStore, build_store
from geocnn.domains.base import Domain
from geocnn.evaluation.plots import plot_montage
from geocnn.models.tasks import Targets, TaskSpec, task_spec
from geocnn.synthetic.galaxies import make_galaxies

MONTAGE = 32
"""Test galaxies drawn in the montage."""


def montage_order(truth: np.ndarray, proba: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Up to ``n`` positions: the most confident errors (at most half), then a shuffled round-robin over the true
    classes of the rest."""
    wrong = np.flatnonzero(proba.argmax(1) != truth)
    errors = wrong[np.argsort(-proba[wrong].max(1), kind="stable")][: n // 2]
    rng = np.random.default_rng(seed)
    rest = np.setdiff1d(np.arange(len(truth)), errors)
    queues = [list(rng.permutation(rest[truth[rest] == c])) for c in np.unique(truth[rest])]
    picked = list(errors)
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop())
    return np.asarray(picked, dtype=int)


class GalaxyDomain(Domain):
    """Galaxy Zoo style catalogs: Kaggle, Zoobot/GZ DECaLS, class folders, any CSV; JPEG/PNG/FITS/GeoTIFF/.npy."""

    name = "galaxy"
    watch_patterns = ("*.jpg", "*.jpeg", "*.png", "*.fits", "*.fit", "*.tif", "*.tiff", "*.npy", "*.npz")

    def prepare(self, cfg: GalaxyExperiment) -> GalaxyExperiment:
        """data.format=synthetic: generate (or reuse) the galaxies and point the config at their catalog."""
        data = cfg.data
        if data.format != "synthetic":
            return cfg
        folder = Path(data.store_root).parent / "synthetic" / \
            f"n{data.synthetic_count}_s{data.synthetic_size}_seed{data.synthetic_seed}"
        csv = folder / "catalog.csv"
        if not csv.exists():
            make_galaxies(folder, data.synthetic_count, data.synthetic_size, seed=data.synthetic_seed)
        return derive(cfg, {"data.format": "csv", "data.catalog": str(csv), "data.images": str(folder),
                            "data.targets": data.targets or ["morphology"]})

    def catalog(self, cfg: GalaxyExperiment) -> Catalog:
        catalog = task_spec(cfg.model.task).prepare(read_galaxy_catalog(self.prepare(cfg).data))
        if cfg.data.class_names is not None:
            catalog = name_classes(catalog, read_class_names(cfg.data.class_names))
        return catalog

    def chip_spec(self, cfg: GalaxyExperiment) -> ChipSpec:
        """Centre crop then resize (Dieleman et al.: 207 of 424 px, then 69 px), bands as configured."""
        d = cfg.data
        return ChipSpec(out_px=d.chip_size, files=True, crop=d.crop, channels=d.channels, bands=d.bands)

    def ingest(self, cfg: GalaxyExperiment, progress: bool = True) -> ChipStore:
        cfg = self.prepare(cfg)
        return build_store(self.catalog(cfg), self.chip_spec(cfg), cfg.data.store_root, progress=progress,
                           shard_size=cfg.orchestration.ingest_shard_size)

    def input_files(self, cfg: GalaxyExperiment) -> list[Path]:
        d = cfg.data
        names = files_under(d.class_names) if isinstance(d.class_names, str) else []
        return (files_under(d.catalog) + files_under(d.images or (folder_of(d.catalog) if d.catalog else None))
                + names)

    def plots(self, store: ChipStore, table: pd.DataFrame, y: np.ndarray, pred: np.ndarray, scored: np.ndarray,
              spec: TaskSpec, targets: Targets, cfg: GalaxyExperiment) -> list[Path]:
        """A montage of test galaxies with true and predicted labels: for classes, the most confident errors and
        then samples of every true class in turn (a class-folder data set is not one class in id order)."""
        test = np.flatnonzero(scored)
        if targets.classes and pred.ndim == 2 and pred.shape[1] == len(targets.classes):
            test = test[montage_order(y[test].astype(int), pred[test], MONTAGE, cfg.seed)]
        test = test[:MONTAGE]
        first_chip = pd.Series(np.arange(len(store.index))).groupby(store.sample_of_rows()).first()
        chips = np.asarray(store.chips[first_chip.loc[test].to_numpy()])
        titles = spec.labels(y[test], pred[test], targets)
        return [plot_montage(chips, titles, cfg.out / "plots" / "test_montage.png")]
