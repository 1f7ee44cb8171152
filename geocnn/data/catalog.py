"""Catalog: one row per sample (id, image path, targets), validated, stored as Parquet."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from geocnn.errors import GeocnnError

ID = "id"
IMAGE = "image"


@dataclass
class Catalog:
    """A validated table of samples.

    Attributes:
        frame: one row per sample with columns ``id`` (str), ``image`` (absolute path, str),
            the target columns and optional ``group``.
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

    def save(self, path: str | Path) -> None:
        """Write the catalog to Parquet (atomically) with its metadata."""
        from geocnn.atomic import atomic_path

        meta = {"targets": ",".join(self.targets), "source": self.source, "classes": "\x1f".join(self.classes)}
        frame = self.frame.copy()
        frame.attrs = {}
        with atomic_path(path) as tmp:
            table = _to_table(frame, meta)
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)

    @classmethod
    def load(cls, path: str | Path) -> "Catalog":
        """Read a catalog written by :meth:`save`."""
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items() if not k.startswith(b"pandas")}
        classes = meta.get("classes", "")
        return cls(
            frame=table.to_pandas(),
            targets=[t for t in meta.get("targets", "").split(",") if t],
            source=meta.get("source", str(path)),
            classes=classes.split("\x1f") if classes else [],
        )


def _to_table(frame: pd.DataFrame, meta: dict[str, str]):  # noqa: ANN202 - pyarrow type
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    merged = dict(table.schema.metadata or {})
    merged.update({k.encode(): v.encode() for k, v in meta.items()})
    return table.replace_schema_metadata(merged)


def _show(value: object) -> str:
    """Repr of a cell for messages, without numpy's ``np.float64(...)`` wrapper."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def require_columns(frame: pd.DataFrame, columns: list[str], source: str, key: str) -> None:
    """Fail naming the missing columns, the file, the config key and the columns that do exist."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        import difflib

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
