"""Two predictions tables of the same rows compared by a paired test (``geocnn compare``): is B really better?"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from geocnn.data.catalog import require_columns
from geocnn.errors import GeocnnError
from geocnn.evaluation.bootstrap import Truth, bootstrap_intervals, mcnemar, metric_draws, paired_bootstrap
from geocnn.evaluation.grouped import PROB, is_classification_table

HELD_OUT = "test"
"""The split value of held-out rows in a run's predictions table (every row of an out-of-fold run)."""


def common_rows(a: pd.DataFrame, b: pd.DataFrame, target: str, columns: list[str], held_out: bool,
                sources: tuple[str, str]) -> pd.DataFrame:
    """The rows of both tables joined on ``id`` (suffixes ``_a``/``_b``), with the same truth in both and, with
    ``held_out``, held out (split ``test``) in both runs."""
    for frame, source in zip((a, b), sources, strict=True):
        require_columns(frame, ["id", target, *columns], source, "--target/--prediction")
    keep = ["id", target, *columns, *(["split"] if held_out and "split" in a and "split" in b else [])]
    both = a[keep].astype({"id": str}).merge(b[keep].astype({"id": str}), on="id", suffixes=("_a", "_b"))
    both = both[both[f"{target}_a"].notna() & both[f"{target}_b"].notna()]
    if "split_a" in both:
        both = both[(both["split_a"] == HELD_OUT) & (both["split_b"] == HELD_OUT)]
    if len(both) < 2:
        raise GeocnnError(f"{sources[0]} and {sources[1]}: {len(both)} rows share an id with a known '{target}'"
                          + (" and are held out (split=test) in both" if held_out else "")
                          + "; a paired test needs the same rows in both tables (--all-rows compares every row)")
    differ = both[f"{target}_a"].astype(str) != both[f"{target}_b"].astype(str)
    if differ.any():
        row = both[differ].iloc[0]
        raise GeocnnError(f"{sources[1]}: id {row['id']!r}, column '{target}': truth {row[f'{target}_b']!r} differs "
                          f"from {row[f'{target}_a']!r} in {sources[0]}; compare tables of the same labelled rows")
    return both


def compare_tables(a: pd.DataFrame, b: pd.DataFrame, target: str, prediction: str | None = None,
                   group: str | None = None, held_out: bool = True, n: int = 1000, level: float = 0.95,
                   seed: int = 0, sources: tuple[str, str] = ("A", "B")) -> dict[str, Any]:
    """Paired test of B against A on their common rows: McNemar's exact test on the predicted classes of
    ``prob_<class>`` tables, else a paired (cluster, with ``group``) bootstrap of r2 of ``prediction``.

    Returns:
        rows, the test, each table's headline metrics with bootstrap intervals, ``difference`` (B - A), its
        p-value and whether it is significant at 5 %.
    """
    classes = is_classification_table(a, target) and is_classification_table(b, target)
    if classes:
        names = [str(c)[len(PROB):] for c in a.columns if str(c).startswith(PROB)]
        columns = [f"{PROB}{c}" for c in names]
        theirs = sorted(str(c)[len(PROB):] for c in b.columns if str(c).startswith(PROB))
        if theirs != sorted(names):
            raise GeocnnError(f"{sources[1]}: classes {theirs} differ from {sorted(names)} in {sources[0]}; compare "
                              "two models of the same classes")
    else:
        prediction = prediction or f"pred_{target}"
        columns = [prediction]
    both = common_rows(a, b, target, columns + ([group] if group else []), held_out, sources)
    preds = {side: both[[f"{c}_{side}" for c in columns]].to_numpy(np.float64) for side in "ab"}
    if not all(np.isfinite(p).all() for p in preds.values()):
        raise GeocnnError(f"{sources[0]}/{sources[1]}: a prediction in {columns} is missing on a common row; "
                          "compare rows both models predicted")
    units = both[f"{group}_a"].astype(str).to_numpy() if group else None
    if classes:
        truth_names = both[f"{target}_a"].astype(str).to_numpy()
        unknown = sorted(set(truth_names) - set(names))
        if unknown:
            raise GeocnnError(f"{sources[0]}: column '{target}' holds classes {unknown} without a prob_<class> column")
        index = {name: k for k, name in enumerate(names)}
        truth = Truth(labels=np.array([index[t] for t in truth_names], int))
        test_name = "McNemar"
        test = mcnemar(preds["b"].argmax(1) == truth.labels, preds["a"].argmax(1) == truth.labels)
    else:
        y = both[f"{target}_a"].to_numpy(np.float64)[:, None]
        truth = Truth(values=y, mask=np.isfinite(y))
        test_name = "paired bootstrap of r2"
        test = paired_bootstrap(truth, preds["b"], preds["a"], "r2", units, n, level, seed)
    ci = bootstrap_intervals(truth, {"a": preds["a"], "b": preds["b"]}, units, n, level, seed)
    ones = np.ones((1, len(both)), np.float32)
    scores = {side: {m: float(v[0]) for m, v in metric_draws(truth, preds[side], ones).items()} for side in "ab"}
    for side in "ab":
        scores[side].update({k.split("/", 1)[1]: v for k, v in ci.items() if k.startswith(f"{side}/")})
    out = {"rows": len(both), "test": test_name, "a": scores["a"], "b": scores["b"],
           "difference_b_minus_a": test["difference"], "p_value": test["p_value"],
           "significant": bool(test["p_value"] < 0.05)}
    if classes:  # the discordant pairs McNemar weighs (the test's first model is B)
        out.update({"only_a_right": int(test["only_b"]), "only_b_right": int(test["only_a"])})
    else:
        out.update({"ci_low": test["ci_low"], "ci_high": test["ci_high"]})
    return out
