"""Scene specs resolved into raster files: paths, globs, folders, VRTs, STAC documents and STAC API searches.

A scene spec item is one of:

- a raster path (kept as given; a ``{band}`` pattern is kept too: it names one file per band);
- a glob (``tiles/*.tif``, ``scenes/**/*.tif``): the files it matches, sorted;
- a folder: its ``*.tif``, ``*.tiff`` and ``*.vrt`` files (not recursive; use a ``**`` glob for that), sorted;
- a GDAL VRT (``.vrt``): kept as one raster. GDAL already mosaics its sources on its own grid, with the VRT's own
  band selection, scaling, resampling and source priority (the last source wins); expanding it into its sources
  would change the pixels it stands for and drop those options. Its source files count in the chip store key
  (:meth:`geocnn.data.chips.ChipSpec.inputs`);
- a STAC JSON document (Item, ItemCollection, Catalog or Collection; a local ``.json`` file or an ``http(s)`` URL
  ending in ``.json``): the ``asset`` of every item, filtered by ``bbox``/``datetime`` when given, sorted;
- a STAC API URL (``http(s)`` not ending in a raster or JSON suffix; its landing page, or its ``/search``
  endpoint): the ``asset`` of every item the search returns, sorted.

Other URIs (``s3://``, ``gs://``, ``/vsi...``, ``https://`` ending in a raster suffix) are passed through
unresolved (rasterio/GDAL opens them). Plain paths keep their order (a mosaic reads the first covering scene
first); each glob, folder or STAC source contributes its files sorted, in its place; duplicates are dropped.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlparse

import pystac
import pystac_client
import rasterio
from shapely.geometry import shape

from geocnn.errors import GeocnnError

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")
"""Files a folder contributes."""
REMOTE_RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".nc", ".hdf", ".h5")
"""URL path endings passed through as rasters (not read as STAC)."""
STAC_SUFFIXES = (".json", ".geojson")
"""Local files and URL path endings read as STAC documents."""
SIDECARS = (".aux.xml", ".ovr", ".msk", ".tfw", ".prj")
"""GDAL sidecar files a glob may match but that are not rasters of their own."""
BAND_TOKEN = "{band}"
API_ITEM_LIMIT = 10_000
"""A STAC API search without ``max_items`` stops with an error beyond this many items (a whole archive, unfiltered)."""


def resolve_scenes(spec_items: Sequence[str], *, asset: str | None = None, bbox: Sequence[float] | None = None,
                   datetime_range: str | None = None, collections: Sequence[str] | None = None,
                   max_items: int | None = None, key: str = "earth.scenes") -> list[str]:
    """The concrete raster files of a scene spec (paths, globs, folders, VRTs, STAC documents or API URLs).

    Args:
        spec_items: the spec items, in order (see the module docstring).
        asset: the STAC asset key to read from each item (e.g. ``visual``, ``B04``, ``data``); required when a
            STAC source is given.
        bbox: STAC only: keep items intersecting (min lon, min lat, max lon, max lat), EPSG:4326.
        datetime_range: STAC only: keep items in this RFC 3339 instant or interval (``2015-05-02``,
            ``2015-01-01/2015-12-31``, open ends as ``..``).
        collections: STAC API only: search these collections.
        max_items: STAC API only: stop after this many items.
        key: the config key or option named in errors (``earth.scenes``, ``--scene``).

    Returns:
        File paths and URIs (URIs unresolved), deterministic: plain paths in their order, each expanded source
        sorted in its place, duplicates dropped.

    Raises:
        GeocnnError: a glob matching nothing, an empty folder, a STAC source without the asset (naming the asset
            keys its items have) or without items, an unreachable or failing STAC API (naming the URL).
    """
    if isinstance(spec_items, str):
        spec_items = [spec_items]
    if bbox is not None:
        bbox = _check_bbox(bbox, key)
    stac = {"asset": asset, "bbox": bbox, "datetime_range": datetime_range, "key": key}
    out: list[str] = []
    for item in spec_items:
        out += _resolve_one(str(item), stac, list(collections) if collections else None, max_items, key)
    return list(dict.fromkeys(out))


def is_uri(item: str) -> bool:
    """Whether a spec item is a URI (``scheme://...``) or a GDAL virtual path (``/vsi...``)."""
    return "://" in item or item.startswith("/vsi")


def _resolve_one(item: str, stac: dict[str, Any], collections: list[str] | None, max_items: int | None,
                 key: str) -> list[str]:
    """The files of one spec item."""
    if not item.strip():
        raise GeocnnError(f"{key}: an empty scene entry; remove it or give a path, glob, folder or STAC source.")
    if is_uri(item):
        scheme = urlparse(item).scheme.lower()
        if scheme not in ("http", "https"):
            return [item]
        path = unquote(urlparse(item).path).lower()
        if path.endswith(REMOTE_RASTER_SUFFIXES) or BAND_TOKEN in item:
            return [item]
        if path.endswith(STAC_SUFFIXES):
            return _stac_document(item, **stac)
        return _stac_api(item, collections=collections, max_items=max_items, **stac)
    if BAND_TOKEN in item:
        return [item]
    if glob.has_magic(item):
        matches = sorted(m for m in glob.glob(str(Path(item).expanduser()), recursive=True)
                         if Path(m).is_file() and not m.lower().endswith(SIDECARS))
        if not matches:
            raise GeocnnError(f"{key}: the glob {item!r} matches no file (relative to {Path.cwd()}). Check the "
                              "pattern, or list the scene files.")
        return matches
    path = Path(item).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.is_file() and p.name.lower().endswith(RASTER_SUFFIXES))
        if not files:
            raise GeocnnError(f"{key}: the folder {item} holds no raster (*.tif, *.tiff or *.vrt; subfolders are "
                              f"not searched: use a glob such as '{item.rstrip('/')}/**/*.tif').")
        return files
    if path.suffix.lower() in STAC_SUFFIXES:
        if not path.is_file():
            raise GeocnnError(f"{key}: the STAC file {item} does not exist; check the path.")
        return _stac_document(item, **stac)
    return [item]


# ------------------------------------------------------------------------------------------------------- STAC


def _stac_document(source: str, asset: str | None, bbox: list[float] | None, datetime_range: str | None,
                   key: str) -> list[str]:
    """Asset files of the items of a static STAC document (Item, ItemCollection, Catalog or Collection)."""
    try:
        data = pystac.StacIO.default().read_json(source)
    except Exception as exc:  # noqa: BLE001 - urllib, OSError and JSON errors
        raise GeocnnError(f"{source}: cannot read this STAC document ({type(exc).__name__}: {exc}). Check the path "
                          f"or URL in {key}.") from None
    kind = data.get("type") if isinstance(data, dict) else None
    try:
        if kind == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(data, preserve_dict=False).items)
            base = source
        elif kind == "Feature":
            items = [pystac.Item.from_dict(data, href=source, preserve_dict=False)]
            base = source
        elif kind in ("Catalog", "Collection"):
            root = pystac.read_dict(data, href=source)
            items = list(root.get_items(recursive=True))  # type: ignore[union-attr]
            base = source
        else:
            raise GeocnnError(f"{source}: not a STAC Item, ItemCollection, Catalog or Collection (type {kind!r}).")
    except GeocnnError:
        raise
    except Exception as exc:  # noqa: BLE001 - pystac raises several types for invalid documents
        raise GeocnnError(f"{source}: not a valid STAC document ({type(exc).__name__}: {exc}).") from None
    items = [it for it in items if _in_bbox(it, bbox) and _in_time(it, datetime_range, source)]
    if not items:
        raise GeocnnError(f"{source}: no STAC item{_filters(bbox, datetime_range)}; widen earth.stac_bbox / "
                          f"earth.stac_datetime or check {key}.")
    return sorted(_asset_href(it, asset, source, base) for it in items)


def _stac_api(url: str, asset: str | None, bbox: list[float] | None, datetime_range: str | None, key: str,
              collections: list[str] | None, max_items: int | None) -> list[str]:
    """Asset files of the items a STAC API search returns (the landing page's search, or a /search URL)."""
    args = {"bbox": bbox, "datetime": datetime_range, "collections": collections,
            "max_items": max_items or API_ITEM_LIMIT + 1}
    try:
        if urlparse(url).path.rstrip("/").endswith("/search"):
            search = pystac_client.ItemSearch(url, method="GET", **args)
        else:
            search = pystac_client.Client.open(url).search(method="GET", **args)
        items = list(search.items())
    except Exception as exc:  # noqa: BLE001 - requests, pystac_client.APIError, JSON and conformance errors
        raise GeocnnError(f"{url}: the STAC API search failed ({type(exc).__name__}: {_short(exc)}). Check that the "
                          f"URL in {key} is a STAC API (its landing page or its /search endpoint) and reachable from "
                          "this machine.") from None
    if max_items is None and len(items) > API_ITEM_LIMIT:
        raise GeocnnError(f"{url}: the STAC API search returned more than {API_ITEM_LIMIT} items; narrow it with "
                          "earth.stac_bbox / earth.stac_datetime / earth.stac_collections, or set "
                          "earth.stac_max_items.")
    if not items:
        raise GeocnnError(f"{url}: the STAC API search returned no item{_filters(bbox, datetime_range)}"
                          f"{f' in collections {collections}' if collections else ''}; widen earth.stac_bbox / "
                          "earth.stac_datetime / earth.stac_collections.")
    return sorted(_asset_href(it, asset, url, url) for it in items)


def _asset_href(item: Any, asset: str | None, source: str, base: str) -> str:
    """The absolute path or URL of an item's asset (``file://`` URLs as paths)."""
    keys = sorted(item.assets)
    if not asset:
        raise GeocnnError(f"{source}: STAC item {item.id!r} has assets {keys}; choose the one to read with "
                          "earth.stac_asset (e.g. a multi-band 'visual' COG, or 'data').")
    if asset not in item.assets:
        raise GeocnnError(f"{source}: STAC item {item.id!r} has no asset {asset!r}; its assets are {keys}. Set "
                          "earth.stac_asset to one of them.")
    href = item.assets[asset].get_absolute_href() or item.assets[asset].href
    if not is_uri(href) and not Path(href).is_absolute():
        href = urljoin(base, href) if is_uri(base) else str(Path(base).parent / href)
    if href.startswith("file://"):
        href = unquote(urlparse(href).path)
    return href


def _check_bbox(bbox: Sequence[float], key: str) -> list[float]:
    values = [float(v) for v in bbox]
    if len(values) != 4 or not all(math.isfinite(v) for v in values) or values[0] > values[2] \
            or values[1] > values[3]:
        raise GeocnnError(f"{key}: the STAC bbox must be [min lon, min lat, max lon, max lat] (EPSG:4326), not "
                          f"{list(bbox)}; fix earth.stac_bbox.")
    return values


def _in_bbox(item: Any, bbox: list[float] | None) -> bool:
    """Whether an item's bbox (or geometry bounds) intersects ``bbox`` (always true without one)."""
    if bbox is None:
        return True
    box = item.bbox
    if box is None and item.geometry is not None:
        box = list(shape(item.geometry).bounds)
    if box is None:
        return False
    box = list(box)
    if len(box) == 6:  # 3-D bbox: min x, min y, min z, max x, max y, max z
        box = [box[0], box[1], box[3], box[4]]
    return not (box[2] < bbox[0] or box[0] > bbox[2] or box[3] < bbox[1] or box[1] > bbox[3])


def _in_time(item: Any, datetime_range: str | None, source: str) -> bool:
    """Whether an item's datetime (or start/end interval) meets the RFC 3339 instant or interval."""
    if not datetime_range:
        return True
    lo, hi = _interval(datetime_range, source)
    props = item.common_metadata
    start = props.start_datetime or item.datetime
    end = props.end_datetime or item.datetime
    if start is None or end is None:
        return False
    start, end = _utc(start), _utc(end)
    return not ((hi is not None and start > hi) or (lo is not None and end < lo))


def _interval(text: str, source: str) -> tuple[datetime | None, datetime | None]:
    """(start, end) of an RFC 3339 instant or ``start/end`` interval; dates cover their whole day."""
    parts = text.split("/")
    if len(parts) > 2:
        raise GeocnnError(f"{source}: datetime {text!r} is not an instant or a 'start/end' interval; fix "
                          "earth.stac_datetime.")
    ends = [parts[0], parts[-1]]
    out: list[datetime | None] = []
    for k, part in enumerate(ends):
        part = part.strip()
        if part in ("", ".."):
            out.append(None)
            continue
        try:
            value = datetime.fromisoformat(part)
        except ValueError:
            raise GeocnnError(f"{source}: datetime {part!r} is not RFC 3339 (e.g. 2015-05-02 or "
                              "2015-05-02T00:00:00Z); fix earth.stac_datetime.") from None
        value = _utc(value)
        if k == 1 and len(part) == 10:  # a date as the end: through the whole day
            value += timedelta(days=1) - timedelta(microseconds=1)
        out.append(value)
    return out[0], out[1]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _filters(bbox: list[float] | None, datetime_range: str | None) -> str:
    parts = ([f"bbox {bbox}"] if bbox else []) + ([f"datetime {datetime_range!r}"] if datetime_range else [])
    return f" matching {' and '.join(parts)}" if parts else ""


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def vrt_sources(paths: Iterable[str]) -> list[str]:
    """The source files of local VRTs among ``paths`` (for content keys: the VRT's pixels live in them)."""
    out: list[str] = []
    for path in paths:
        if is_uri(path) or not path.lower().endswith(".vrt") or not Path(path).is_file():
            continue
        try:
            with rasterio.open(path) as ds:
                files = [f for f in ds.files if Path(f).resolve() != Path(path).resolve()]
        except Exception:  # noqa: BLE001 - an unreadable VRT fails when opened as a scene, with its own error
            continue
        out += [f for f in files if not is_uri(f) and Path(f).is_file()]
    return list(dict.fromkeys(out))


__all__ = ["RASTER_SUFFIXES", "is_uri", "resolve_scenes", "vrt_sources"]
