"""The interactive map: a self-contained Leaflet page beside a COG (prediction, interval width, clusters, areas)."""

from __future__ import annotations

import base64
import html as html_text
import io
import json
import math
import re
from functools import cache
from pathlib import Path
from typing import Any

import folium
import geopandas as gpd
import matplotlib
import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from branca.element import Element, MacroElement
from jinja2 import Template
from matplotlib.colors import Colormap, Normalize, to_hex
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import array_bounds
from rasterio.warp import calculate_default_transform, reproject, transform_bounds

from geocnn.atomic import atomic_path
from geocnn.data.sources.raster import open_raster
from geocnn.errors import GeocnnError

STATIC = Path(__file__).parent / "static" / "leaflet"
"""Leaflet 1.9.4 (BSD-2, see its LICENSE there), inlined into every page so that it works offline."""
DISPLAY_MAX_PX = 1024
"""Raster layers are shown at most this many pixels on their longer side (read from overviews, then warped)."""
WEB_MERCATOR = CRS.from_epsg(3857)
"""Leaflet draws an image overlay linearly in Web Mercator between its lat/lon bounds: layers are warped to it."""
MAX_LAT = 85.0511
"""Web Mercator's latitude limit."""
WIDTH_BAND = "interval_width"
"""Band description of the width of the prediction interval (see ``geocnn.domains.earth_maps.INTERVAL_BANDS``)."""
NOT_PREDICTION = {"lower", "upper", WIDTH_BAND}
"""Band descriptions that are not the prediction itself."""
AREA_STATS = ("mean", "population", "n_pixels", "coverage_fraction", "nodata_share", "weighting")
"""Columns of area aggregates shown in their tooltip beside every ``*_mean`` (see ``geocnn.outputs.aggregate``)."""
VECTOR_SUFFIXES = (".gpkg", ".geojson", ".shp")
"""Vector files of area aggregates that a run's map picks up (``write_webmap`` reads any that pyogrio can)."""
_REMOTE = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.IGNORECASE)


class _Inline(Element):
    """Markup placed in the page as is (inlined scripts and styles)."""

    _template = Template("{{ this.markup }}")

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.markup = markup


class _Control(MacroElement):
    """A Leaflet control holding fixed HTML (title, colour bar); with ``layer``, shown only while that layer is."""

    _template = Template("""
        {% macro script(this, kwargs) %}
        var {{ this.get_name() }} = L.control({position: {{ this.position|tojson }}});
        {{ this.get_name() }}.onAdd = function (map) {
            var div = L.DomUtil.create("div", {{ this.css_class|tojson }});
            div.innerHTML = {{ this.markup|tojson }};
            L.DomEvent.disableClickPropagation(div);
            return div;
        };
        {% if this.layer %}
        (function (map, layer, control) {
            if (map.hasLayer(layer)) { control.addTo(map); }
            map.on("overlayadd", function (e) { if (e.layer === layer) { control.addTo(map); } });
            map.on("overlayremove", function (e) { if (e.layer === layer) { control.remove(); } });
        })({{ this._parent.get_name() }}, {{ this.layer.get_name() }}, {{ this.get_name() }});
        {% else %}
        {{ this.get_name() }}.addTo({{ this._parent.get_name() }});
        {% endif %}
        {% endmacro %}
    """)

    def __init__(self, markup: str, position: str, css_class: str, layer: Any = None) -> None:
        super().__init__()
        self._name = "Control"
        self.markup, self.position, self.css_class, self.layer = markup, position, css_class, layer


@cache
def _leaflet_assets() -> tuple[str, str]:
    """Leaflet's JS and CSS, the CSS with its images as data URIs (no request leaves the page)."""
    js = (STATIC / "leaflet.js").read_text(encoding="utf-8")
    js = re.sub(r"//# sourceMappingURL=\S+\s*$", "", js)  # the map is not shipped
    css = (STATIC / "leaflet.css").read_text(encoding="utf-8")

    def data_uri(match: re.Match) -> str:
        png = base64.b64encode((STATIC / match.group(1)).read_bytes()).decode("ascii")
        return f"url(data:image/png;base64,{png})"

    css = re.sub(r"url\((images/[\w.-]+\.png)\)", data_uri, css)
    return js, css


def _fmt(value: Any) -> str:
    """A value for a popup or tick: numbers to 4 significant digits, missing as an en dash."""
    if value is None or (isinstance(value, float | np.floating) and not math.isfinite(float(value))):
        return "–"
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    return str(value)


def _caption(name: str, units: str) -> str:
    """A colour bar's caption: the quantity and its units (HTML-escaped)."""
    return html_text.escape(f"{name} [{units}]" if units else name)


def _colour_bar(cmap: Colormap, vmin: float, vmax: float, caption: str) -> str:
    """HTML of a horizontal colour bar: caption, gradient and five ticks."""
    stops = ", ".join(f"{to_hex(cmap(k / 10))} {k * 10}%" for k in range(11))
    ticks = "".join(f'<span style="position:absolute;left:{k * 25}%;transform:translateX(-{k * 25}%)">'
                    f"{_fmt(vmin + (vmax - vmin) * k / 4)}</span>" for k in range(5))
    return (f'<div class="geocnn-colourbar-caption" style="font-weight:bold;margin-bottom:3px">{caption}</div>'
            f'<div style="width:220px;height:12px;background:linear-gradient(to right, {stops});'
            f'border:1px solid #555"></div>'
            f'<div style="position:relative;width:220px;height:14px;font-size:11px">{ticks}</div>')


def _band(src: rasterio.DatasetReader, names: list[str]) -> int | None:
    """The 1-based index of the first band described by one of ``names``, else None."""
    descriptions = [d or "" for d in src.descriptions]
    for name in names:
        if name in descriptions:
            return descriptions.index(name) + 1
    return None


def _prediction_band(src: rasterio.DatasetReader, target: str) -> int:
    """The prediction band: described ``prediction`` or the target, else the first not an interval band, else 1."""
    found = _band(src, ["prediction", target])
    if found is not None:
        return found
    return next((i + 1 for i, d in enumerate(src.descriptions) if d and d not in NOT_PREDICTION), 1)


def _web_raster(src: rasterio.DatasetReader, band: int) -> tuple[np.ndarray, list[list[float]]]:
    """One band read from overviews (at most ``DISPLAY_MAX_PX`` a side) and warped to Web Mercator (NaN nodata),
    with its [[south, west], [north, east]] bounds in degrees."""
    factor = max(1, math.ceil(max(src.width, src.height) / DISPLAY_MAX_PX))
    shape = (math.ceil(src.height / factor), math.ceil(src.width / factor))
    data = src.read(band, out_shape=shape, masked=True, resampling=Resampling.average)
    data = data.astype(np.float64).filled(np.nan)
    src_transform = src.transform * Affine.scale(src.width / shape[1], src.height / shape[0])
    west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    if south < -MAX_LAT or north > MAX_LAT:
        raise GeocnnError(f"{src.name}: the map reaches latitude {min(south, -north):.2f}..{max(north, -south):.2f}, "
                          f"beyond Web Mercator's ±{MAX_LAT}; the HTML map cannot show polar rasters (use the COG)")
    transform, width, height = calculate_default_transform(src.crs, WEB_MERCATOR, shape[1], shape[0], *src.bounds)
    left, bottom, right, top = array_bounds(height, width, transform)
    scale = max(1.0, max(width, height) / DISPLAY_MAX_PX)
    width, height = max(1, round(width / scale)), max(1, round(height / scale))
    transform = Affine((right - left) / width, 0, left, 0, -(top - bottom) / height, top)
    warped = np.full((height, width), np.nan)
    reproject(data, warped, src_transform=src_transform, src_crs=src.crs, src_nodata=np.nan,
              dst_transform=transform, dst_crs=WEB_MERCATOR, dst_nodata=np.nan, resampling=Resampling.nearest)
    west, south, east, north = transform_bounds(WEB_MERCATOR, "EPSG:4326", left, bottom, right, top)
    return warped, [[south, west], [north, east]]


def _limits(values: np.ndarray) -> tuple[float, float]:
    """The colour range of finite ``values`` (widened when constant; 0..1 when there are none)."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def _png_uri(values: np.ndarray, cmap: Colormap, vmin: float, vmax: float) -> str:
    """A PNG data URI of ``values`` coloured by ``cmap`` (NaN transparent)."""
    rgba = cmap(Normalize(vmin, vmax, clip=True)(values), bytes=True)
    rgba[~np.isfinite(values)] = 0
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _raster_layer(m: folium.Map, src: rasterio.DatasetReader, band: int, name: str, cmap: Colormap, caption: str,
                  show: bool) -> tuple[list[list[float]], float, float]:
    """Add one band as an image overlay with its colour bar (shown with the layer); its bounds and colour range."""
    values, bounds = _web_raster(src, band)
    vmin, vmax = _limits(values)
    layer = folium.raster_layers.ImageOverlay(_png_uri(values, cmap, vmin, vmax), bounds, name=name, opacity=0.8,
                                              show=show, interactive=False, cross_origin=False)
    layer.add_to(m)
    _Control(_colour_bar(cmap, vmin, vmax, caption), "bottomright", "geocnn-colourbar", layer).add_to(m)
    return bounds, vmin, vmax


def _require(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise GeocnnError(f"{what}: no column(s) {', '.join(missing)} (columns: {', '.join(map(str, frame.columns))})"
                          "; give the predictions table of the run (id, lat, lon, the target, pred_<target>)")


def _clusters_layer(m: folium.Map, clusters: pd.DataFrame, target: str, cmap: Colormap, vmin: float,
                    vmax: float) -> int:
    """Survey clusters as circle markers filled by their observed value, with a popup; how many were drawn."""
    predicted = f"pred_{target}"
    _require(clusters, ["lat", "lon", target, predicted], "clusters table")
    rows = clusters[np.isfinite(pd.to_numeric(clusters["lat"], errors="coerce"))
                    & np.isfinite(pd.to_numeric(clusters["lon"], errors="coerce"))]
    extra = [c for c in ("fold", "split", "group", f"lower_{target}", f"upper_{target}") if c in rows.columns]
    norm = Normalize(vmin, vmax, clip=True)
    features = []
    for _, row in rows.iterrows():
        observed = pd.to_numeric(row[target], errors="coerce")
        fill = to_hex(cmap(norm(observed))) if np.isfinite(observed) else "#ffffff"
        props = {"id": _fmt(row["id"]) if "id" in rows.columns else _fmt(row.name), "observed": _fmt(observed),
                 "predicted": _fmt(row[predicted]), **{c: _fmt(row[c]) for c in extra}, "_fill": fill}
        features.append({"type": "Feature", "properties": props,
                         "geometry": {"type": "Point", "coordinates": [float(row["lon"]), float(row["lat"])]}})
    fields = ["id", "observed", "predicted", *extra]
    layer = folium.GeoJson(
        {"type": "FeatureCollection", "features": features}, name="survey clusters",
        marker=folium.CircleMarker(radius=5, weight=1, color="#000000", fill=True, fill_opacity=0.9),
        style_function=lambda f: {"fillColor": f["properties"]["_fill"], "color": "#000000", "weight": 1},
        popup=folium.GeoJsonPopup(fields=fields, aliases=[f"{f}:" for f in fields], class_name="geocnn-cluster"),
        tooltip=folium.GeoJsonTooltip(fields=["id"], aliases=["cluster:"]))
    layer.add_to(m)
    return len(features)


def _aggregates_layer(m: folium.Map, aggregates: gpd.GeoDataFrame | str | Path, cmap: Colormap, vmin: float,
                      vmax: float) -> int:
    """Area aggregates as outlined polygons (filled by ``prediction_mean`` or ``mean`` when there is one), with a
    tooltip of a few of their own columns and their aggregates; how many were drawn."""
    frame = aggregates
    if not isinstance(frame, gpd.GeoDataFrame):
        try:
            frame = gpd.read_file(aggregates)
        except Exception as exc:  # noqa: BLE001 - pyogrio raises its own errors for unreadable files
            raise GeocnnError(f"{aggregates}: cannot read the area aggregates ({exc}); give a GeoPackage, "
                              "GeoJSON or Shapefile of polygons") from exc
    if frame.crs is None:
        raise GeocnnError(f"{aggregates if not isinstance(aggregates, gpd.GeoDataFrame) else 'aggregates'}: the "
                          "polygons have no CRS; write them with one (e.g. EPSG:4326)")
    frame = frame.to_crs("EPSG:4326")
    own = [str(c) for c in frame.columns if c != frame.geometry.name]
    stats = [c for c in own if c in AREA_STATS or c.endswith("_mean")]
    columns = [*[c for c in own if c not in stats][:3], *stats]  # a few names of the area, then its aggregates
    shown = gpd.GeoDataFrame({c: [_fmt(v) for v in frame[c]] for c in columns}, geometry=frame.geometry.values,
                             crs=frame.crs)
    mean = next((c for c in ("prediction_mean", "mean", *stats) if c in columns and c.endswith("mean")), None)
    norm = Normalize(vmin, vmax, clip=True)
    if mean is not None:
        values = pd.to_numeric(frame[mean], errors="coerce").to_numpy(np.float64)
        shown["_fill"] = [to_hex(cmap(norm(v))) if np.isfinite(v) else "" for v in values]
    data = json.loads(shown.to_json(na="null"))

    def style(feature: dict) -> dict:
        fill = feature["properties"].get("_fill") or ""
        return {"color": "#333333", "weight": 1.5, "fillColor": fill or "#ffffff",
                "fillOpacity": 0.6 if fill else 0.0}

    folium.GeoJson(data, name="area aggregates", style_function=style,
                   tooltip=folium.GeoJsonTooltip(fields=[str(c) for c in columns]) if columns else None).add_to(m)
    return len(frame)


def stable_ids(page: str) -> str:
    """folium names its elements with random hex ids: number them in order of appearance instead, so the same map
    gives the same bytes (reruns and uploads compare equal)."""
    ids: dict[str, str] = {}
    return re.sub(r"\b([a-z][a-z_]*_)([0-9a-f]{32})(?![0-9a-zA-Z])",
                  lambda m: m.group(1) + ids.setdefault(m.group(2), f"{len(ids):032x}"), page)


def write_webmap(map_tif: str | Path, out_html: str | Path, clusters: pd.DataFrame | None = None,
                 aggregates: gpd.GeoDataFrame | str | Path | None = None, target: str = "prediction",
                 units: str = "", title: str = "", tiles: str | None = None) -> Path:
    """Write an interactive map of a prediction COG as one self-contained HTML file (atomically).

    Layers (a layer control lists them): the prediction band (described ``prediction`` or ``target``, else band 1)
    with a colour bar captioned with ``target`` and ``units`` (default: the COG's UNITS tag; its DEFINITION tag is
    shown under the title); the width of the prediction interval when the COG has a band described
    ``interval_width`` (off at first; its own colour bar); ``clusters`` (a predictions table: ``id``, ``lat``,
    ``lon``, ``target``, ``pred_<target>``, and ``fold``/``split``/``group``/interval bounds when present) as circle
    markers filled with the observed value on the prediction's colour scale, with a popup; ``aggregates``
    (polygons, a GeoDataFrame or a vector file, e.g. ``geocnn aggregate``'s) outlined, filled by
    ``prediction_mean`` (or ``mean``) on the same scale, with a tooltip of their names and aggregates.

    Rasters are warped to Web Mercator and embedded as PNGs, and Leaflet itself is inlined: the page needs no
    network. ``tiles`` (a folium tile name such as ``OpenStreetMap``) adds a base map that is fetched from the
    internet when viewed.
    """
    map_tif, out_html = Path(map_tif), Path(out_html)
    m = folium.Map(tiles=tiles, control_scale=True, prefer_canvas=False)
    m.default_js, m.default_css = [], []  # Leaflet is inlined below; folium's CDN links (and jQuery, ...) are not
    with open_raster(map_tif) as src:
        if src.crs is None:
            raise GeocnnError(f"{map_tif}: the raster has no CRS, so it cannot be placed on a web map; write the "
                              "map with its scene's georeferencing")
        band = _prediction_band(src, target)
        tags = src.tags()  # the map's provenance tags (geocnn.domains.earth_maps.map_tags): UNITS, DEFINITION
        units = units or tags.get("UNITS", "")
        definition = tags.get("DEFINITION", "")
        width_band = _band(src, [WIDTH_BAND])
        bounds, vmin, vmax = _raster_layer(m, src, band, html_text.escape(f"predicted {target}"),
                                           matplotlib.colormaps["viridis"],
                                           _caption(f"predicted {target}", units), show=True)
        if width_band is not None:
            _raster_layer(m, src, width_band, "interval width", matplotlib.colormaps["magma"],
                          _caption(f"{target} interval width", units), show=False)
    if aggregates is not None:
        _aggregates_layer(m, aggregates, matplotlib.colormaps["viridis"], vmin, vmax)
    if clusters is not None:
        _clusters_layer(m, clusters, target, matplotlib.colormaps["viridis"], vmin, vmax)
    heading = title or f"predicted {target}"
    subtitle = f'<div style="max-width:320px">{html_text.escape(definition)}</div>' if definition else ""
    _Control(f'<div style="font-size:14px;font-weight:bold">{html_text.escape(heading)}</div>{subtitle}', "topright",
             "geocnn-title").add_to(m)
    folium.LayerControl(collapsed=False, position="topright").add_to(m)
    m.fit_bounds(bounds)
    js, css = _leaflet_assets()
    figure = m.get_root()
    figure.title = html_text.escape(heading)
    figure.header.add_child(_Inline(f"<style>{css}</style>"), name="leaflet_css")
    figure.header.add_child(_Inline(f"<script>{js}</script>"), name="leaflet")
    figure.header.add_child(_Inline(".geocnn-colourbar, .geocnn-title {background: rgba(255,255,255,0.9); "
                                    "padding: 6px 10px; border-radius: 4px; box-shadow: 0 1px 5px rgba(0,0,0,0.4);}"
                                    .join(("<style>", "</style>"))), name="geocnn_css")
    html = stable_ids(figure.render())
    remote = _REMOTE.search(html)
    if remote:
        raise GeocnnError(f"{out_html}: folium {folium.__version__} added a script or stylesheet from the internet "
                          f"({remote.group(0)}...); the offline page needs it inlined in geocnn/outputs/webmap.py")
    with atomic_path(out_html) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return out_html
