"""Survey points (e.g. DHS clusters): CSV, Parquet or GeoJSON read into a validated id/lat/lon/targets table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from geocnn.data.catalog import ID, require_columns
from geocnn.data.sources.uris import is_uri, local_copy
from geocnn.errors import GeocnnError

LAT, LON, GROUP, URBAN, WEIGHT = "lat", "lon", "group", "urban", "weight"
"""Output columns besides ``id`` and the targets."""

GEOJSON_SUFFIXES = (".geojson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")

URBAN_WORDS = {"urban": "urban", "u": "urban", "1": "urban", "true": "urban",
               "rural": "rural", "r": "rural", "0": "rural", "2": "rural", "false": "rural"}
"""Accepted urban/rural codes (case-insensitive): words, U/R (DHS GPS files), 1/0 and 1.0/0.0 (Yeh et al.),
1/2 (DHS v025)."""
UNKNOWN = "unknown"
"""The urban value of a point whose code is one of the configured unknown values (left out of urban/rural metrics)."""


def read_survey(path: str | Path, lat_column: str = "lat", lon_column: str = "lon", targets: Sequence[str] = (),
                id_column: str | None = None, group_column: str | None = None, urban_column: str | None = None,
                weight_column: str | None = None, urban_unknown: Sequence[str] = (UNKNOWN,)) -> pd.DataFrame:
    """Read survey points with coordinates and targets, failing on the first bad cell.

    Args:
        path: a CSV (``.csv``/``.tsv``/``.txt``), Parquet (``.parquet``/``.pq``) or GeoJSON
            (``.geojson``/``.json``: Point features, coordinates from the geometry, properties as columns) file.
        lat_column, lon_column: the EPSG:4326 coordinate columns (ignored for GeoJSON).
        targets: numeric target columns (may be empty, e.g. for prediction).
        id_column: a unique id column; default the 1-based data row number.
        group_column: optional column kept as ``group`` (text, e.g. the country for out-of-country splits).
        urban_column: optional column kept as ``urban`` with values ``"urban"``/``"rural"`` (accepts
            urban/rural, U/R, 1/0, 1.0/0.0, 1/2 with 2 = rural as in DHS v025, true/false), or ``"unknown"``
            for a value listed in ``urban_unknown``.
        weight_column: optional non-negative survey weight kept as ``weight``.

    Returns:
        A DataFrame with columns ``id`` (str), ``lat``, ``lon`` (float64), each target (float64), then
        ``group``, ``urban``, ``weight`` where configured, then every other column of the file under its own name
        (the configured group and urban columns too, as read).

    Raises:
        GeocnnError: naming the file, the row (spreadsheet numbering: header = row 1; GeoJSON: feature number)
            and the column of the first problem, and how to fix it.
    """
    path = path if is_uri(path) else Path(path).expanduser()  # s3://, gs://, https:// read through fsspec
    source = str(path)
    targets = list(targets)
    raw, geojson = _read_any(path)
    if geojson:
        lat_column, lon_column = LAT, LON
    _check_names(source, targets, lat_column, lon_column)
    configured = [(lat_column, "earth.lat_column"), (lon_column, "earth.lon_column")]
    configured += [(t, "data.targets") for t in targets]
    configured += [(c, k) for c, k in ((id_column, "data.id_column"), (group_column, "data.group_column"),
                                      (urban_column, "earth.urban_column"), (weight_column, "earth.weight_column"))
                   if c]
    for column, key in configured:
        require_columns(raw, [column], source, key)
    if len(raw) == 0:
        raise GeocnnError(f"{source}: the survey file has no rows (only a header). Point it at a file with points.")
    row = _feature_number if geojson else _row_number
    out = pd.DataFrame({ID: _ids(raw, id_column, source, row)})
    out[LAT] = _numbers(raw[lat_column], source, lat_column, row)
    out[LON] = _numbers(raw[lon_column], source, lon_column, row)
    _check_coordinates(out, source, lat_column, lon_column, row)
    for target in targets:
        out[target] = _numbers(raw[target], source, target, row)
        if len(out) > 1 and out[target].nunique() == 1:
            raise GeocnnError(f"{source}: column '{target}' is constant ({out[target].iloc[0]:g} at all {len(out)} "
                              "points); there is nothing to learn. Check the column, or choose another data.targets.")
    if group_column:
        out[GROUP] = _texts(raw[group_column], source, group_column, row)
    if urban_column:
        out[URBAN] = _urban(raw[urban_column], source, urban_column, row, urban_unknown)
    if weight_column:
        out[WEIGHT] = _numbers(raw[weight_column], source, weight_column, row)
        _check_weights(out[WEIGHT], source, weight_column, row)
    used = {lat_column, lon_column, *out.columns} | ({id_column} if id_column else set())
    kept = {column: _as_read(raw[column]).to_numpy() for column in raw.columns if column not in used}
    return pd.concat([out, pd.DataFrame(kept, index=out.index)], axis=1) if kept else out


def _as_read(values: pd.Series) -> pd.Series:
    """A passed-through column: numbers when every filled cell is one, else text as in the file."""
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers if (numbers.notna() | values.isna()).all() else values


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------


def _read_any(path: Path | str) -> tuple[pd.DataFrame, bool]:
    """The raw table and whether it came from GeoJSON (a URI: from a downloaded copy, errors naming the URI)."""
    if is_uri(path):
        with local_copy(str(path)) as local:
            return _read_any(local)
    if not path.exists():
        raise GeocnnError(f"{path}: survey file does not exist. Fix data.catalog (relative paths are relative to "
                          "the working directory).")
    if path.is_dir():
        raise GeocnnError(f"{path}: is a folder; the survey must be a CSV, Parquet or GeoJSON file.")
    suffix = path.suffix.lower()
    if suffix in GEOJSON_SUFFIXES:
        return _read_geojson(path), True
    try:
        if suffix in PARQUET_SUFFIXES:
            return pd.read_parquet(path).reset_index(drop=True), False
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                           na_values=[""]), False
    except pd.errors.EmptyDataError:
        raise GeocnnError(f"{path}: the survey file is empty (no header, no rows). It needs a header line with "
                          "the lat/lon columns and one row per point.") from None
    except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many types for unreadable files
        raise GeocnnError(f"{path}: cannot read the survey file ({exc}). It must be a CSV with a header line, a "
                          "Parquet file or a GeoJSON FeatureCollection of points.") from None


def _read_geojson(path: Path) -> pd.DataFrame:
    """Point features as rows: lon/lat from the geometry, then the properties."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GeocnnError(f"{path}: not valid GeoJSON ({exc}). Export the survey as a GeoJSON "
                          "FeatureCollection of Point features, or as CSV.") from None
    features = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(features, list):
        raise GeocnnError(f"{path}: not a GeoJSON FeatureCollection (no 'features' list). Export the survey as a "
                          "FeatureCollection of Point features.")
    if not features:
        raise GeocnnError(f"{path}: the FeatureCollection has no features. Point it at a file with points.")
    rows = [_feature_row(path, i, f) for i, f in enumerate(features)]
    return pd.DataFrame(rows)


def _feature_row(path: Path, i: int, feature: object) -> dict[str, object]:
    geometry = feature.get("geometry") if isinstance(feature, dict) else None
    kind = geometry.get("type") if isinstance(geometry, dict) else None
    coords = geometry.get("coordinates") if isinstance(geometry, dict) else None
    if kind != "Point" or not isinstance(coords, list) or len(coords) < 2:
        got = "no geometry" if geometry is None else f"a {kind} geometry" if kind != "Point" else "a malformed Point"
        raise GeocnnError(f"{path}: feature {i + 1} has {got}; survey points must be Point features "
                          "(convert polygons to their centroids first).")
    props = feature.get("properties") or {}
    clash = [k for k in (LAT, LON) if k in props]
    props = {k: v for k, v in props.items() if k not in clash}
    return {LAT: coords[1], LON: coords[0], **props}


# --------------------------------------------------------------------------------------------------------------
# Columns
# --------------------------------------------------------------------------------------------------------------


def _row_number(i: int) -> str:
    return f"row {i + 2}"


def _feature_number(i: int) -> str:
    return f"feature {i + 1}"


def _check_names(source: str, targets: list[str], lat_column: str, lon_column: str) -> None:
    dupes = sorted({t for t in targets if targets.count(t) > 1})
    if dupes:
        raise GeocnnError(f"{source}: targets name {dupes} more than once; list each column once.")
    clash = [t for t in targets if t in (ID, LAT, LON, GROUP, URBAN, WEIGHT, lat_column, lon_column)]
    if clash:
        raise GeocnnError(f"{source}: target column(s) {clash} clash with the survey's own columns "
                          f"({ID}, {LAT}, {LON}, {GROUP}, {URBAN}, {WEIGHT}); choose other targets or rename them.")


def _ids(raw: pd.DataFrame, id_column: str | None, source: str, row) -> list[str]:  # noqa: ANN001
    if id_column is None:
        return [str(i + 1) for i in range(len(raw))]
    ids = _texts(raw[id_column], source, id_column, row)
    dup = pd.Series(ids).duplicated(keep=False).to_numpy()
    if dup.any():
        first = np.flatnonzero(dup)
        rows = [row(int(i)) for i in first if ids[int(i)] == ids[int(first[0])]][:3]
        raise GeocnnError(f"{source}: column '{id_column}': duplicate id {ids[int(first[0])]!r} at "
                          f"{', '.join(rows)}. Ids must be unique: fix or drop the duplicate, or leave id_column "
                          "unset to number the rows.")
    return ids


def _texts(values: pd.Series, source: str, column: str, row) -> list[str]:  # noqa: ANN001
    """Cells as text (integer-valued floats without '.0'); a missing cell fails naming its row."""
    out = []
    for i, v in enumerate(values.tolist()):
        if v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip()):
            raise GeocnnError(f"{source}: {row(i)}, column '{column}': the value is missing. Fill it or drop the "
                              "row.")
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = int(v)
        out.append(str(v).strip())
    return out


def _numbers(values: pd.Series, source: str, column: str, row) -> np.ndarray:  # noqa: ANN001
    """A column as float64; a missing, non-numeric or infinite cell fails naming its row."""
    numbers = pd.to_numeric(values, errors="coerce")
    arr = numbers.to_numpy(dtype=float, na_value=np.nan) if len(numbers) else np.zeros(0)
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        cell = values.iloc[i]
        missing = cell is None or (isinstance(cell, float) and np.isnan(cell)) or str(cell).strip() in ("", "nan")
        what = "is missing" if missing else f"{cell!r} is not a finite number"
        more = f" ({int(bad.sum())} bad rows in all)" if bad.sum() > 1 else ""
        raise GeocnnError(f"{source}: {row(i)}, column '{column}': the value {what}{more}. Fix the cell or drop "
                          "the row.")
    return arr


def _check_coordinates(out: pd.DataFrame, source: str, lat_column: str, lon_column: str, row) -> None:  # noqa: ANN001
    lat, lon = out[LAT].to_numpy(), out[LON].to_numpy()
    for values, column, limit in ((lat, lat_column, 90), (lon, lon_column, 180)):
        bad = np.abs(values) > limit
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            swapped = np.abs(lon) <= 90
            hint = (f" Are the lat and lon columns swapped? Most longitudes are within [-90, 90]; check "
                    f"lat_column='{lat_column}', lon_column='{lon_column}'." if column == lat_column
                    and swapped.all() else " Coordinates must be EPSG:4326 degrees (lat in [-90, 90], "
                    "lon in [-180, 180]); projected coordinates must be converted first.")
            raise GeocnnError(f"{source}: {row(i)}, column '{column}': {values[i]} is outside [-{limit}, {limit}] "
                              f"({int(bad.sum())} row(s) in all).{hint}")
    zero = (lat == 0) & (lon == 0)
    if zero.any():
        i = int(np.flatnonzero(zero)[0])
        raise GeocnnError(f"{source}: {row(i)}, columns '{lat_column}'/'{lon_column}': the point is (0, 0), the "
                          f"code DHS uses for a cluster without GPS ({int(zero.sum())} row(s) in all). Drop these "
                          "rows.")


def _urban(values: pd.Series, source: str, column: str, row, unknown: Sequence[str]) -> list[str]:  # noqa: ANN001
    """Urban/rural codes as 'urban'/'rural' (numbers written as floats too: 1.0/0.0/2.0), or 'unknown'."""
    unknown_set = {str(u).strip().lower() for u in unknown}
    texts = [t.lower() for t in _texts(values, source, column, row)]
    texts = [t[:-2] if t.endswith(".0") and t[:-2].isdigit() else t for t in texts]
    for i, t in enumerate(texts):
        if t not in URBAN_WORDS and t not in unknown_set:
            raise GeocnnError(f"{source}: {row(i)}, column '{column}': {t!r} is not an urban/rural code. Use "
                              "urban/rural, U/R, 1/0 (or 1.0/0.0) or 1/2 (2 = rural); list codes that mean 'not "
                              f"known' in earth.urban_unknown (now {sorted(unknown_set)}).")
    if "0" in texts and "2" in texts:
        i = texts.index("2")
        raise GeocnnError(f"{source}: {row(i)}, column '{column}': the column mixes 0 and 2, so the rural code "
                          "is ambiguous. Use 1/0 or 1/2 (1 = urban) consistently.")
    return [UNKNOWN if t in unknown_set else URBAN_WORDS[t] for t in texts]


def _check_weights(weights: pd.Series, source: str, column: str, row) -> None:  # noqa: ANN001
    bad = weights.to_numpy() < 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise GeocnnError(f"{source}: {row(i)}, column '{column}': survey weight {weights.iloc[i]} is negative. "
                          "Weights must be >= 0.")
