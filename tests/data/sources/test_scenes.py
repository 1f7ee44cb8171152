"""Scene specs resolved to files: globs, folders, VRTs, STAC documents written with pystac, a STAC API served on
127.0.0.1, URIs passed through, and the errors (real GeoTIFF tiles cut from shared/data)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.warp import transform_bounds

from geocnn.config import load_config
from geocnn.data.chips import ChipSpec
from geocnn.data.sources.raster import open_scene, read_chip
from geocnn.data.sources.scenes import resolve_scenes
from geocnn.domains.earth import EarthDomain
from geocnn.errors import GeocnnError
from tests.data.sources.tiles import cut_tiles, write_vrt

pytestmark = pytest.mark.realdata

VIIRS = "satellite/nightlights/viirs_sao_tome_2014-01.tif"


@pytest.fixture
def tiles(shared_data: Path, tmp_path: Path) -> list[Path]:
    """Six real GeoTIFF tiles of the VIIRS Sao Tome raster (EPSG:4326), plus non-raster files beside them."""
    out = cut_tiles(shared_data / VIIRS, tmp_path / "tiles", 6)
    (tmp_path / "tiles" / "notes.txt").write_text("not a raster")
    (tmp_path / "tiles" / "tile_00_00.tif.aux.xml").write_text("<PAMDataset/>")
    return out


def items_of(tiles: list[Path]) -> list[pystac.Item]:
    """One STAC item per tile: bbox/geometry from the tile, dated a month apart, assets 'data' and 'thumbnail'."""
    items = []
    for k, tile in enumerate(tiles):
        with rasterio.open(tile) as ds:
            w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
        geom = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
        item = pystac.Item(f"tile{k}", geom, [w, s, e, n], datetime(2014, 1 + k, 15, tzinfo=timezone.utc), {})
        item.add_asset("data", pystac.Asset(str(tile), media_type=pystac.MediaType.GEOTIFF))
        item.add_asset("thumbnail", pystac.Asset(str(tile.with_suffix(".png")), media_type=pystac.MediaType.PNG))
        items.append(item)
    return items


# -------------------------------------------------------------------------------------------- paths, globs, folders


def test_glob_and_folder_resolve_to_sorted_rasters(tiles: list[Path], tmp_path: Path) -> None:
    want = sorted(str(t) for t in tiles)
    assert resolve_scenes([str(tmp_path / "tiles" / "*.tif")]) == want
    assert resolve_scenes([str(tmp_path / "tiles" / "tile_*")]) == want  # sidecars and text files left out
    assert resolve_scenes([str(tmp_path / "tiles")]) == want
    assert resolve_scenes([str(tmp_path / "**" / "tile_01_*.tif")]) == [t for t in want if "tile_01_" in t]


def test_plain_paths_keep_their_order_and_duplicates_go(tiles: list[Path], tmp_path: Path) -> None:
    a, b = str(tiles[3]), str(tiles[0])
    assert resolve_scenes([a, b, a]) == [a, b]  # mosaic priority: the first scene listed is read first
    got = resolve_scenes([a, str(tmp_path / "tiles" / "*.tif")])
    assert got[0] == a and sorted(got) == sorted(str(t) for t in tiles) and len(got) == len(tiles)


def test_uris_and_band_patterns_pass_through(tmp_path: Path) -> None:
    items = ["s3://bucket/scenes/a.tif", "gs://b/x_{band}.tif", "https://host.example/data/scene.tif",
             "/vsicurl/https://host.example/b.tif", str(tmp_path / "LC08_{band}.tif"), str(tmp_path / "missing.tif")]
    assert resolve_scenes(items) == items  # unresolved: opening them (and their errors) comes later


def test_vrt_is_one_raster_whose_sources_count_in_the_store_key(shared_data: Path, tiles: list[Path],
                                                                 tmp_path: Path) -> None:
    vrt = write_vrt(tiles, shared_data / VIIRS, tmp_path / "tiles" / "mosaic.vrt")
    assert resolve_scenes([str(vrt)]) == [str(vrt)]
    assert str(vrt) in resolve_scenes([str(tmp_path / "tiles")])  # a folder contributes its VRTs too
    spec = ChipSpec(out_px=8, files=False, scenes=[str(vrt)], chip_m=5000.0)
    assert spec.inputs()[0] == str(vrt) and sorted(spec.inputs()[1:]) == sorted(str(t) for t in tiles)
    with open_scene(vrt) as mosaic, open_scene(shared_data / VIIRS) as whole:  # GDAL mosaics the tiles
        assert (mosaic.width, mosaic.height) == (whole.width, whole.height)
        for lon, lat in [(6.6, 0.25), (6.72, 0.35), (7.4, 1.6)]:
            np.testing.assert_array_equal(read_chip(mosaic, lon, lat, 8, size_m=5000.0)[0],
                                          read_chip(whole, lon, lat, 8, size_m=5000.0)[0])


def test_glob_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(GeocnnError, match=r"the glob .*nothing_\*\.tif.* matches no file"):
        resolve_scenes([str(tmp_path / "nothing_*.tif")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(GeocnnError, match=r"the folder .*empty holds no raster"):
        resolve_scenes([str(tmp_path / "empty")])
    with pytest.raises(GeocnnError, match="--scene: the glob"):
        resolve_scenes([str(tmp_path / "*.tiff")], key="--scene")


# ------------------------------------------------------------------------------------------------ STAC documents


def test_stac_item_collection_catalog_and_item(tiles: list[Path], tmp_path: Path) -> None:
    items = items_of(tiles)
    want = sorted(str(t) for t in tiles)
    path = tmp_path / "items.json"
    pystac.ItemCollection(items).save_object(dest_href=str(path))
    assert resolve_scenes([str(path)], asset="data") == want

    catalog = pystac.Catalog("tiles", "the VIIRS tiles")
    catalog.add_items([item.clone() for item in items])
    catalog.normalize_hrefs(str(tmp_path / "catalog"))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    assert resolve_scenes([str(tmp_path / "catalog" / "catalog.json")], asset="data") == want

    item_file = tmp_path / "catalog" / "tile2" / "tile2.json"
    assert resolve_scenes([str(item_file)], asset="data") == [str(tiles[2])]


def test_stac_relative_asset_hrefs_resolve_against_the_document(tiles: list[Path], tmp_path: Path) -> None:
    items = items_of(tiles[:2])
    for item in items:
        item.assets["data"].href = f"tiles/{Path(item.assets['data'].href).name}"
    path = tmp_path / "relative.json"
    pystac.ItemCollection(items).save_object(dest_href=str(path))
    assert resolve_scenes([str(path)], asset="data") == sorted(str(t) for t in tiles[:2])


def test_stac_bbox_and_datetime_filters(tiles: list[Path], tmp_path: Path) -> None:
    items = items_of(tiles)
    path = tmp_path / "items.json"
    pystac.ItemCollection(items).save_object(dest_href=str(path))
    first = items[0].bbox
    inside = [first[0] + 0.01, first[1] + 0.01, first[0] + 0.02, first[1] + 0.02]
    hits = [str(tiles[k]) for k, it in enumerate(items)
            if not (it.bbox[2] < inside[0] or it.bbox[0] > inside[2] or it.bbox[3] < inside[1]
                    or it.bbox[1] > inside[3])]
    assert str(tiles[0]) in hits and len(hits) < len(tiles)
    assert resolve_scenes([str(path)], asset="data", bbox=inside) == sorted(hits)
    # items are dated 2014-01-15, 2014-02-15, ...: February and March, then everything from April on
    assert resolve_scenes([str(path)], asset="data", datetime_range="2014-02-01/2014-03-15") == \
        sorted(str(t) for t in tiles[1:3])
    assert resolve_scenes([str(path)], asset="data", datetime_range="2014-04-01T00:00:00Z/..") == \
        sorted(str(t) for t in tiles[3:])
    with pytest.raises(GeocnnError, match="no STAC item matching datetime '2020-01-01/..'"):
        resolve_scenes([str(path)], asset="data", datetime_range="2020-01-01/..")


def test_stac_without_the_asset_key_lists_the_keys(tiles: list[Path], tmp_path: Path) -> None:
    path = tmp_path / "items.json"
    pystac.ItemCollection(items_of(tiles)).save_object(dest_href=str(path))
    with pytest.raises(GeocnnError, match=r"has no asset 'visual'; its assets are \['data', 'thumbnail'\]"):
        resolve_scenes([str(path)], asset="visual")
    with pytest.raises(GeocnnError, match=r"has assets \['data', 'thumbnail'\]; choose .* earth.stac_asset"):
        resolve_scenes([str(path)])


# ------------------------------------------------------------------------------------------------ STAC API


class _Api(BaseHTTPRequestHandler):
    """A minimal STAC API: landing page (conformance, search link) and GET /search (bbox, datetime ignored)."""

    items: list[dict] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlparse(self.path)
        base = f"http://{self.headers['Host']}"
        if url.path in ("", "/"):
            body = {"type": "Catalog", "id": "api", "description": "test API", "stac_version": "1.0.0",
                    "conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                                   "https://api.stacspec.org/v1.0.0/item-search"],
                    "links": [{"rel": "self", "href": f"{base}/"}, {"rel": "root", "href": f"{base}/"},
                              {"rel": "search", "href": f"{base}/search", "type": "application/geo+json",
                               "method": "GET"}]}
        elif url.path == "/search":
            query = parse_qs(url.query)
            feats = self.items
            if "bbox" in query:
                x0, y0, x1, y1 = (float(v) for v in query["bbox"][0].split(","))
                feats = [f for f in feats if not (f["bbox"][2] < x0 or f["bbox"][0] > x1 or f["bbox"][3] < y0
                                                  or f["bbox"][1] > y1)]
            body = {"type": "FeatureCollection", "features": feats, "links": []}
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stac_api(tiles: list[Path]) -> Iterator[str]:
    handler = type("Api", (_Api,), {"items": [it.to_dict() for it in items_of(tiles)]})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_stac_api_landing_page_and_search_url(stac_api: str, tiles: list[Path]) -> None:
    want = sorted(str(t) for t in tiles)
    assert resolve_scenes([stac_api], asset="data") == want
    assert resolve_scenes([f"{stac_api}/search"], asset="data") == want
    with rasterio.open(tiles[0]) as ds:
        w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    got = resolve_scenes([stac_api], asset="data", bbox=[w + 0.01, s + 0.01, w + 0.02, s + 0.02])
    assert str(tiles[0]) in got and len(got) < len(tiles)  # the bbox reached the server
    with pytest.raises(GeocnnError, match="has no asset 'B04'; its assets are"):
        resolve_scenes([stac_api], asset="B04")


def test_unreachable_stac_api_names_the_url() -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/stac"
    with pytest.raises(GeocnnError, match=rf"{url}: the STAC API search failed .* reachable"):
        resolve_scenes([url], asset="data")


# ------------------------------------------------------------------------------------------------ experiments


def test_prepare_resolves_once_and_keeps_the_spec(shared_data: Path, tiles: list[Path], tmp_path: Path) -> None:
    pattern = str(tmp_path / "tiles" / "*.tif")
    cfg = load_config(overrides=["data.format=survey", f"data.catalog={tmp_path / 'points.csv'}",
                                 "data.targets=[y]", f"data.store_root={tmp_path / 'stores'}",
                                 f"earth.scenes=['{pattern}']", "earth.chip_m=3000"])
    domain = EarthDomain()
    prepared = domain.prepare(cfg)
    want = sorted(str(t) for t in tiles)
    assert prepared.earth.scenes == want and prepared.earth.scene_sources == [pattern]
    assert domain.chip_spec(prepared).scenes == want
    assert domain.chip_spec(cfg).scenes == want  # unprepared configs are resolved the same way
    (tmp_path / "tiles" / "tile_99_99.tif").write_bytes(Path(want[0]).read_bytes())
    assert domain.prepare(prepared) == prepared  # resolved once: a prepared config is not resolved again
