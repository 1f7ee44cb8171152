"""Catalog: one validated row per sample for every domain (id, where its pixels are, targets, group, lat/lon)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from geocnn.errors import GeocnnError

ID = "id"
"""Sample id (text, unique)."""
IMAGE = "image"
"""Absolute path of the sample's image or tile file (absent when pixels are cut from scenes around lat/lon)."""
GROUP = "group"
"""Optional group (e.g. country) for grouped splits and per-group metrics; also kept under its original name."""
LAT, LON = "lat", "lon"
"""Optional EPSG:4326 coordinates of the sample (spatial blocks, chips from scenes, GeoJSON exports)."""
URBAN, WEIGHT = "urban", "weight"
"""Optional urban/rural label and survey weight."""
SPLIT = "split"
"""A data set's own partition of a sample (train/val/test), used by split.method=predefined."""
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}
"""Names data sets give their partitions (folders or a split column), and the partition each means."""
RESERVED = (ID, IMAGE, GROUP, LAT, LON, URBAN, WEIGHT)
"""Columns a reader fills itself; targets may not use these names."""


@dataclass
class Catalog:
    """A validated table of samples.

    Attributes:
        frame: one row per sample: ``id`` (str), ``image`` (absolute path) when pixels come from a file per
            sample, the target columns, optional ``group``, ``lat``/``lon``, ``urban``, ``weight``, and every
            other column of the source table under its own name.
        targets: names of the target columns, in model-output order.
        source: where the catalog came from (file or folder), for error messages.
        classes: class names when the single target is a class label (index = label), else [].
    """

    frame: pd.DataFrame
    targets: list[str]
    source: str
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frame)


def _show(value: object) -> str:
    """Repr of a cell for messages, without numpy's ``np.float64(...)`` wrapper."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def require_columns(frame: pd.DataFrame, columns: list[str], source: str, key: str) -> None:
    """Fail naming the missing columns, the file, the config key and the columns that do exist."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        available = [str(c) for c in frame.columns]
        shown = ", ".join(available[:40]) + (f", ... ({len(available) - 40} more)" if len(available) > 40 else "")
        hints = {m: difflib.get_close_matches(str(m), available, n=1) for m in missing}
        hint = "".join(f" Did you mean '{h[0]}' for '{m}'?" for m, h in hints.items() if h)
        raise GeocnnError(
            f"{source}: column(s) {missing} named by config key '{key}' not found. "
            f"Available columns: {shown}.{hint} Fix the column name in the config."
        )


def validate_targets(frame: pd.DataFrame, targets: list[str], source: str, *, fractions: bool = False,
                     counts: bool = False) -> None:
    """Check targets are numeric and finite (and in [0, 1] for fractions, >= 0 for counts).

    Errors name the file, the 1-based data row (as in a spreadsheet, header = row 1) and the column.
    """
    for col in targets:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad_type = values.isna() & frame[col].notna()
        if bad_type.any():
            i = int(bad_type.to_numpy().nonzero()[0][0])
            raise GeocnnError(
                f"{source}: row {i + 2}, column '{col}': value {_show(frame[col].iloc[i])} is not a number. "
                "Fix or remove that row."
            )
        nonfinite = pd.Series(~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan)), index=values.index)
        if nonfinite.any():
            i = int(nonfinite.to_numpy().nonzero()[0][0])
            raise GeocnnError(
                f"{source}: row {i + 2}, column '{col}': value {_show(frame[col].iloc[i])} is missing, NaN or "
                "infinite. Fill it or drop the row."
            )
        if fractions:
            out = (values < 0) | (values > 1)
            if out.any():
                i = int(out.to_numpy().nonzero()[0][0])
                raise GeocnnError(
                    f"{source}: row {i + 2}, column '{col}': vote fraction {_show(values.iloc[i])} is outside "
                    "[0, 1]. Fractions must lie in [0, 1]; use task 'regression' for unbounded targets."
                )
        if counts:
            out = values < 0
            if out.any():
                i = int(out.to_numpy().nonzero()[0][0])
                raise GeocnnError(
                    f"{source}: row {i + 2}, column '{col}': vote count {_show(values.iloc[i])} is negative. "
                    "Counts must be >= 0; fix that row."
                )


def validate_ids(frame: pd.DataFrame, source: str) -> None:
    """Fail on an empty catalog or duplicate ids, naming the rows."""
    if len(frame) == 0:
        raise GeocnnError(f"{source}: the catalog is empty (no rows). Point the config at a catalog with samples.")
    dup = frame[ID].duplicated(keep=False)
    if dup.any():
        rows = (dup.to_numpy().nonzero()[0][:2] + 2).tolist()
        raise GeocnnError(
            f"{source}: duplicate id {_show(frame[ID][dup].iloc[0])} at rows {rows}. Ids must be unique; "
            "remove the duplicate."
        )


def _plain(value: object) -> object:
    """A numpy scalar as the Python value (for readable messages)."""
    return value.item() if isinstance(value, np.generic) else value


def _blank(values: pd.Series) -> pd.Series:
    """True where a text cell is empty or whitespace."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return pd.Series(False, index=values.index)
    return values.map(lambda v: isinstance(v, str) and not v.strip()).astype(bool)



def encode_classes(values: pd.Series, source: str, column: str) -> tuple[pd.Series, list[str]]:
    """Encode class labels as int64 codes 0..K-1 in sorted order (numbers numerically, else as text).

    Args:
        values: the label column.
        source: file named in errors.
        column: column named in errors.

    Returns:
        The int64 codes (same index) and the class names as strings (index = code).

    Raises:
        GeocnnError: on a missing label, non-integer numeric labels or fewer than 2 classes.
    """
    missing = values.isna() | _blank(values)
    if missing.any():
        i = int(missing.to_numpy().nonzero()[0][0])
        raise GeocnnError(f"{source}: row {i + 2}, column '{column}': the class label is missing. "
                          "Fill it or drop the row.")
    if pd.api.types.is_bool_dtype(values):
        keys = values.astype(str)
    else:
        numbers = pd.to_numeric(values, errors="coerce")
        keys = numbers if numbers.notna().all() else values.astype(str)
    if pd.api.types.is_numeric_dtype(keys):
        floats = keys.to_numpy(dtype=float)
        frac = ~np.isfinite(floats) | (floats != np.round(floats))
        if frac.any():
            i = int(frac.nonzero()[0][0])
            raise GeocnnError(
                f"{source}: row {i + 2}, column '{column}': value {_plain(values.iloc[i])!r} is not a class label "
                "(it is a non-integer number). Classification needs labels; use model.task=regression or "
                "vote_fractions for continuous targets.")
        keys = pd.Series(floats.astype(np.int64), index=values.index)
    distinct = sorted(pd.unique(keys))
    if len(distinct) < 2:
        only = ", ".join(map(str, distinct)) or "none"
        raise GeocnnError(f"{source}: column '{column}' holds a single class ({only}); classification needs at "
                          "least 2 classes. Add samples of other classes or choose another target column.")
    lookup = {k: i for i, k in enumerate(distinct)}
    codes = keys.map(lookup).astype("int64")
    return codes, [str(k) for k in distinct]




def name_classes(catalog: Catalog, names: list[str] | dict[str, str], key: str = "data.class_names") -> Catalog:
    """Replace integer class labels (classes '0', '1', ...) by names: a list in code order or a {code: name} map."""
    if not catalog.classes:
        raise GeocnnError(f"{key} is set, but the targets are not class labels (classification); remove {key}")
    mapping = {str(i): n for i, n in enumerate(names)} if isinstance(names, list) else \
        {str(k).strip(): str(v) for k, v in names.items()}
    missing = [c for c in catalog.classes if c not in mapping]
    if missing:
        raise GeocnnError(f"{key}: no name for class label(s) {missing} of {catalog.source} (labels: "
                          f"{catalog.classes}); give a name for every label")
    renamed = [mapping[c] for c in catalog.classes]
    if len(set(renamed)) != len(renamed):
        raise GeocnnError(f"{key}: two labels got the same name ({renamed}); class names must be unique")
    return Catalog(frame=catalog.frame, targets=catalog.targets, source=catalog.source, classes=renamed)
