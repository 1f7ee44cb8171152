"""The galaxy domain: cut-out catalogs (or generated galaxies) -> morphology; montages, reliability, what to review."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geocnn.config import GalaxyExperiment, derive
from geocnn.data.catalog import IMAGE, SPLIT, Catalog, name_classes
from geocnn.data.chips import ChipSpec
from geocnn.data.fingerprint import files_under
from geocnn.data.schema import DecisionTree
from geocnn.data.sources.digits import write_digits
from geocnn.data.sources.galaxy_tables import read_class_names, read_galaxy_catalog
from geocnn.data.sources.images import folder_of
from geocnn.data.store import ChipStore, build_store
from geocnn.domains.base import Domain, Evaluation, Trained, targets_of
from geocnn.evaluation.calibration import fit_temperature, temper
from geocnn.evaluation.plots import plot_montage, plot_reliability
from geocnn.models.tasks import Targets, TaskSpec, task_spec
from geocnn.outputs.tables import write_table
from geocnn.synthetic.galaxies import make_galaxies

MONTAGE = 32
"""Test galaxies drawn in the montage."""
REVIEW_SPLITS = ("test", "unlabeled")
"""Rows ranked for review: held-out test galaxies and those label_fraction < 1 left unlabeled (never trained on)."""


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


def first_chips(store: ChipStore, samples: np.ndarray) -> np.ndarray:
    """The first chip of each of the given sample positions, (N, C, H, W)."""
    first_chip = pd.Series(np.arange(len(store.index))).groupby(store.sample_of_rows()).first()
    return np.asarray(store.chips[first_chip.loc[samples].to_numpy()])


def entropy(proba: np.ndarray) -> np.ndarray:
    """Predictive entropy of each row's class probabilities in nats, ``-sum p log p`` (``0 log 0 = 0``)."""
    p = np.clip(np.asarray(proba, dtype=np.float64), 0.0, 1.0)
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(axis=1)


def vote_entropy(fractions: np.ndarray, tree: DecisionTree) -> np.ndarray:
    """How undecided predicted volunteers are: per question, the entropy of its answers' fractions (normalised to
    sum to 1) divided by log(answers), so 1 is an even split; averaged over the questions weighted by the share of
    volunteers expected to reach each (its answers' predicted total: 1 for a root question). In [0, 1]."""
    f = np.clip(np.asarray(fractions, dtype=np.float64), 0.0, None)
    total, weight = np.zeros(len(f)), np.zeros(len(f))
    for start, stop, _ in tree.slices():
        if stop - start < 2:
            continue
        answers = f[:, start:stop]
        reached = answers.sum(axis=1)
        share = answers / np.where(reached > 0, reached, 1.0)[:, None]
        total += reached * entropy(share) / np.log(stop - start)
        weight += reached
    return np.divide(total, weight, out=np.zeros_like(total), where=weight > 0)


def review_table(table: pd.DataFrame, pred: np.ndarray, spec: TaskSpec, targets: Targets, n: int,
                 images: pd.Series | None = None) -> tuple[pd.DataFrame, np.ndarray] | None:
    """What to look at next (Galaxy Zoo's active learning): the ``n`` least certain test and unlabeled galaxies,
    most uncertain first, as rows of ``rank, id, split, image, predicted, confidence, <score>, observed`` (and the
    conformal ``prediction_set``/``set_size`` when the table has them).

    The score is, for classes, ``entropy``: the predictive entropy (nats) of the table's ``prob_<class>`` columns,
    which are the temperature-scaled probabilities when the run fitted a temperature (else ``pred``); ties go to the
    lower top-class probability (``confidence``). For a decision tree of vote fractions or counts (``pred`` holds
    fractions), ``vote_entropy``: the reach-weighted mean normalised entropy per question (:func:`vote_entropy`);
    ``predicted``/``confidence`` are the first question's top answer and its fraction. For other regression with a
    sigmoid (fractions in [0, 1]), ``closeness``: 1 - 2 |p - 0.5| of the first output (1 at 0.5). Unbounded
    regression has no such score: None. ``observed`` is the catalog's value where known (for unlabeled rows, the
    label training never saw; empty when the catalog has none).

    Args:
        table: the run's predictions table (one row per sample, ``id`` and ``split`` columns).
        pred: (samples, outputs) raw predictions in the table's row order.
        spec, targets: the run's task.
        n: how many rows to keep.
        images: per-sample image path in the table's row order, when known.

    Returns:
        The review table and its rows' positions in ``table``, or None (see above).
    """
    split = table[SPLIT].astype(str).to_numpy() if SPLIT in table.columns else np.full(len(table), "test")
    pred = np.asarray(pred, dtype=np.float64)
    if targets.classes:
        names = [f"prob_{c}" for c in targets.classes]
        proba = table[names].to_numpy(np.float64) if set(names) <= set(table.columns) else pred
        score, confidence, score_name = entropy(proba), proba.max(axis=1), "entropy"
        predicted = np.asarray(targets.classes, dtype=object)[proba.argmax(axis=1)]
        truth = targets.names[0]
        observed = table[truth].to_numpy(dtype=object) if truth in table.columns else None
    elif (tree := spec.tree(targets)) is not None:
        start, stop, _ = tree.slices()[0]
        answers, first = tree.columns[start:stop], pred[:, start:stop]
        score, confidence, score_name = vote_entropy(pred, tree), first.max(axis=1), "vote_entropy"
        predicted = np.asarray(answers, dtype=object)[np.nan_to_num(first, nan=-1.0).argmax(axis=1)]
        observed = None
        if set(answers) <= set(table.columns):
            seen = table[answers].to_numpy(np.float64)
            known = np.isfinite(seen).all(axis=1) & (np.nan_to_num(seen).sum(axis=1) > 0)
            observed = np.where(known, np.asarray(answers, dtype=object)[np.nan_to_num(seen).argmax(axis=1)], None)
    elif targets.sigmoid:
        value = pred[:, 0]
        score, confidence, score_name = 1.0 - 2.0 * np.abs(value - 0.5), np.abs(value - 0.5), "closeness"
        predicted = value
        observed = table[targets.names[0]].to_numpy() if targets.names[0] in table.columns else None
    else:
        return None
    ok = np.isin(split, REVIEW_SPLITS) & np.isfinite(score) & np.isfinite(confidence)
    rows = np.flatnonzero(ok)
    ids = table["id"].astype(str).to_numpy()
    key = np.round(score[rows], 12)  # equal scores tie whatever the last bit of their sums
    rows = rows[np.lexsort((ids[rows], confidence[rows], -key))][:n]  # score down, confidence up, then id
    columns: dict[str, np.ndarray] = {"rank": np.arange(1, len(rows) + 1), "id": ids[rows], "split": split[rows]}
    if images is not None:
        columns["image"] = images.astype(str).to_numpy()[rows]
    columns.update({"predicted": predicted[rows], "confidence": confidence[rows], score_name: score[rows],
                    "observed": observed[rows] if observed is not None else np.full(len(rows), None)})
    for name in ("prediction_set", "set_size"):
        if name in table.columns:
            columns[name] = table[name].to_numpy()[rows]
    return pd.DataFrame(columns), rows


def review_titles(review: pd.DataFrame) -> list[str]:
    """Montage captions of a review table: rank and id, prediction and score, the observed value when known."""
    score = next(c for c in ("entropy", "vote_entropy", "closeness") if c in review.columns)
    short = {"entropy": "H", "vote_entropy": "H", "closeness": "c"}[score]
    titles = []
    for r in review.itertuples(index=False):
        pred = f"{r.predicted:.3g}" if isinstance(r.predicted, float) else str(r.predicted)
        text = f"#{r.rank} {str(r.id)[:20]}\n{pred} ({r.confidence:.2f}) {short}={getattr(r, score):.2f}"
        known = r.observed is not None and not (isinstance(r.observed, float) and not np.isfinite(r.observed))
        titles.append(text + (f"\ntrue: {r.observed}" if known else ""))
    return titles


def reliability_plot(table: pd.DataFrame, y: np.ndarray, pred: np.ndarray, scored: np.ndarray,
                     cfg: GalaxyExperiment) -> Path | None:
    """``plots/reliability.png`` of the scored (test) rows: the raw probabilities, and those tempered by a
    temperature fitted on the validation rows (as the run's calibration does) when the run has validation rows and
    uncertainty.enabled and uncertainty.temperature. None when nothing is scored."""
    finite = np.isfinite(pred).all(axis=1)
    test = np.asarray(scored, bool) & finite
    if not test.any():
        return None
    val = (table[SPLIT].astype(str).to_numpy() == "val") & finite if SPLIT in table.columns else np.zeros_like(test)
    u = cfg.uncertainty
    labels = np.asarray(y).astype(int)
    temperature = fit_temperature(pred[val], labels[val]) if u.enabled and u.temperature and val.any() else None
    after = temper(pred[test], temperature) if temperature is not None else None
    return plot_reliability(pred[test], after, labels[test], cfg.out / "plots" / "reliability.png",
                            temperature=temperature)


class GalaxyDomain(Domain):
    """Galaxy Zoo style catalogs: Kaggle, Zoobot/GZ DECaLS, class folders, any CSV; JPEG/PNG/FITS/GeoTIFF/.npy."""

    name = "galaxy"
    watch_patterns = ("*.jpg", "*.jpeg", "*.png", "*.fits", "*.fit", "*.tif", "*.tiff", "*.npy", "*.npz")

    def prepare(self, cfg: GalaxyExperiment) -> GalaxyExperiment:
        """data.format=synthetic: generate (or reuse) the galaxies and point the config at their catalog; digits:
        the same with scikit-learn's handwritten digits (:func:`geocnn.data.sources.digits.write_digits`)."""
        data = cfg.data
        if data.format == "digits":
            return self.prepare_digits(cfg)
        if data.format != "synthetic":
            return cfg
        folder = Path(data.store_root).parent / "synthetic" / \
            f"n{data.synthetic_count}_s{data.synthetic_size}_seed{data.synthetic_seed}"
        csv = folder / "catalog.csv"
        if not csv.exists():
            make_galaxies(folder, data.synthetic_count, data.synthetic_size, seed=data.synthetic_seed)
        return derive(cfg, {"data.format": "csv", "data.catalog": str(csv), "data.images": str(folder),
                            "data.targets": data.targets or ["morphology"]})

    def prepare_digits(self, cfg: GalaxyExperiment) -> GalaxyExperiment:
        """Write (or reuse) the digits folder beside the chip stores and point the config at its catalog (a csv
        catalog of images/<id>.png with target 'digit' unless data.targets says otherwise)."""
        data = cfg.data
        folder = Path(data.store_root).parent / "digits"
        csv = folder / "catalog.csv"
        if not csv.exists():  # written last, so a folder with its catalog is complete
            write_digits(folder)
        return derive(cfg, {"data.format": "csv", "data.catalog": str(csv), "data.images": str(folder),
                            "data.targets": data.targets or ["digit"]})

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
        then samples of every true class in turn (a class-folder data set is not one class in id order); for classes
        also the reliability diagram of the test rows before/after temperature scaling (:func:`reliability_plot`)."""
        test = np.flatnonzero(scored)
        if targets.classes and pred.ndim == 2 and pred.shape[1] == len(targets.classes):
            test = test[montage_order(y[test].astype(int), pred[test], MONTAGE, cfg.seed)]
        test = test[:MONTAGE]
        titles = spec.labels(y[test], pred[test], targets)
        plots = [plot_montage(first_chips(store, test), titles, cfg.out / "plots" / "test_montage.png")]
        if targets.classes and pred.ndim == 2 and pred.shape[1] == len(targets.classes):
            plots += [p for p in [reliability_plot(table, y, pred, scored, cfg)] if p is not None]
        return plots

    def outputs(self, trained: Trained, evaluation: Evaluation, store: ChipStore, cfg: GalaxyExperiment,
                bundle: Path) -> dict[str, Path]:
        """What to look at next: ``review.csv`` (see :func:`review_table`) and ``plots/review_montage.png`` of the
        ``uncertainty.review`` least certain test and unlabeled galaxies (nothing when 0 or the task has no score)."""
        n = cfg.uncertainty.review
        spec, targets = targets_of(store, cfg.model)
        samples = store.samples()
        images = samples[IMAGE] if IMAGE in samples.columns else None
        ranked = review_table(evaluation.table, trained.pred, spec, targets, n, images) if n else None
        if ranked is None:
            return {}
        review, rows = ranked
        csv = write_table(review, cfg.out / "review.csv")
        png = plot_montage(first_chips(store, rows), review_titles(review),
                           cfg.out / "plots" / "review_montage.png")
        return {"review_csv": csv, "review_png": png}
