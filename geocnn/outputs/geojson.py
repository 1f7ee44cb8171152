"""GeoJSON exports: table rows as a FeatureCollection of points (RFC 7946, lon/lat order)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geocnn.atomic import atomic_path
from geocnn.errors import GeocnnError


def _json_value(value: Any) -> Any:
    """A JSON-safe Python value: numpy scalars unwrapped, NaN/inf/NA -> None, timestamps as ISO text."""
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_value(v) for v in value]
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (pd.Timestamp, np.datetime64)):
        return pd.Timestamp(value).isoformat()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value if isinstance(value, str) else str(value)


def _point(lat: Any, lon: Any, row: Any, lat_column: str, lon_column: str) -> dict[str, Any] | None:
    """RFC 7946 Point geometry (lon, lat), or None where a coordinate is missing."""
    if pd.isna(lat) or pd.isna(lon):
        return None
    lat, lon = float(lat), float(lon)
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise GeocnnError(f"row {row!r}: {lat_column}={lat}, {lon_column}={lon} is not a WGS84 lat/lon; check "
                          "the columns are not swapped and the coordinates are in degrees")
    return {"type": "Point", "coordinates": [lon, lat]}


def write_geojson_points(frame: pd.DataFrame, out_path: str | Path, lat_column: str = "lat",
                         lon_column: str = "lon") -> Path:
    """Write rows as a GeoJSON FeatureCollection of Points (lon, lat order), other columns as properties.

    Rows with a missing coordinate get a null geometry; NaN properties become null.
    """
    missing = [c for c in (lat_column, lon_column) if c not in frame.columns]
    if missing:
        raise GeocnnError(f"columns {missing} not in the table (columns: {list(frame.columns)}); pass "
                          "lat_column/lon_column")
    for column in (lat_column, lon_column):
        if not pd.api.types.is_numeric_dtype(frame[column]):
            raise GeocnnError(f"column {column!r} has dtype {frame[column].dtype}; coordinates must be numbers "
                              "in degrees")
    props = frame.drop(columns=[lat_column, lon_column])
    names = [str(c) for c in props.columns]
    features = []
    for index, lat, lon, values in zip(frame.index, frame[lat_column], frame[lon_column],
                                       props.itertuples(index=False, name=None), strict=True):
        features.append({"type": "Feature", "geometry": _point(lat, lon, index, lat_column, lon_column),
                         "properties": {n: _json_value(v) for n, v in zip(names, values, strict=True)}})
    with atomic_path(out_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"type": "FeatureCollection", "features": features}, fh, ensure_ascii=False,
                      allow_nan=False)
    return Path(out_path)

