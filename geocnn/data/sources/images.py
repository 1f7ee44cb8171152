"""Per-sample image files (local or s3://, gs://, https:// URIs): JPEG/PNG, FITS, GeoTIFF and .npy/.npz read as
(bands, H, W); find by id; confine paths."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from rasterio.windows import Window

from geocnn.data.sources import uris
from geocnn.data.sources.raster import open_scene, select_bands
from geocnn.data.sources.uris import is_uri, list_files, local_copy
from geocnn.errors import GeocnnError

PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
FITS_SUFFIXES = (".fits", ".fit", ".fts")
TIFF_SUFFIXES = (".tif", ".tiff")
ARRAY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (*PIL_SUFFIXES, *FITS_SUFFIXES, *TIFF_SUFFIXES, *ARRAY_SUFFIXES)
"""Files found by id or in class folders (case-insensitive), in order of preference when a stem repeats."""
NPZ_KEY = "x"
"""The array an .npz holds the bands under when it holds several (as Yeh et al.'s tiles do)."""


@dataclass(frozen=True)
class Decoded:
    """A decoded file: pixels (bands, H, W) and the name of each band."""

    pixels: np.ndarray
    bands: list[str]


def read_image(path: str | Path, channels: str = "rgb", bands: Sequence[str | int] | None = None,
               nodata: float | None = None) -> Decoded:
    """Read any supported file as (bands, H, W) with band names, keeping only ``bands`` when given.

    JPEG/PNG become uint8 RGB (red, green, blue) or grayscale (gray). FITS (the ``fits`` extra) gives float32
    from the first HDU with data, a cube taken as bands-first (gray averages the bands). GeoTIFF gives float32
    with NaN for nodata (the file's, or ``nodata``), band names from its band descriptions; it may lack a CRS.
    ``.npy`` holds a (bands, H, W) or (H, W) array; ``.npz`` the same under key 'x' (or its only array).

    Args:
        path: the file.
        channels: JPEG/PNG/FITS: ``"rgb"`` or ``"gray"``.
        bands: bands to keep, by name or 1-based index (default all).
        nodata: value read as NaN (GeoTIFF, .npy/.npz float data); default the file's.

    Raises:
        GeocnnError: naming the file when it is missing, damaged, of an unknown type, has another layout, or lacks
            a requested band (listing those it has).
    """
    if channels not in ("rgb", "gray"):
        raise GeocnnError(f"channels must be 'rgb' or 'gray' (data.channels), not {channels!r}.")
    if is_uri(path):  # GeoTIFFs through GDAL (windowed reads), other files downloaded whole through fsspec
        if str(path).lower().endswith(TIFF_SUFFIXES):
            return _read_tiff(path, bands, nodata)  # type: ignore[arg-type]
        with local_copy(str(path)) as local:
            return read_image(local, channels, bands, nodata)
    path = Path(path)
    if not path.is_file():
        raise GeocnnError(f"{path}: image file does not exist. Fix the path in the catalog or data.images.")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(path, bands, nodata)
    if suffix in FITS_SUFFIXES:
        pixels = _load_fits(path, channels)
    elif suffix in ARRAY_SUFFIXES:
        pixels = _load_array(path, nodata)
    else:
        pixels = _load_pil(path, channels)
    names = (["red", "green", "blue"] if pixels.shape[0] == 3 and suffix in PIL_SUFFIXES else
             ["gray"] if pixels.shape[0] == 1 and channels == "gray" else
             [f"band{i + 1}" for i in range(pixels.shape[0])])
    if bands is None:
        return Decoded(pixels, names)
    picks = select_bands(names, bands, str(path), "data.bands / earth.bands")
    return Decoded(np.ascontiguousarray(pixels[picks]), [names[i] for i in picks])


def load_image(path: str | Path, channels: str = "rgb") -> np.ndarray:
    """The pixels of :func:`read_image` (all bands)."""
    return read_image(path, channels).pixels


def _read_tiff(path: Path, bands: Sequence[str | int] | None, nodata: float | None) -> Decoded:
    with open_scene(path, bands, nodata, allow_no_crs=True) as scene:
        pixels = scene.read(Window(0, 0, scene.width, scene.height))
        return Decoded(pixels, list(scene.band_names))


def _load_pil(path: Path, channels: str) -> np.ndarray:
    try:
        with PILImage.open(path) as img:
            img.load()  # decode now, so truncated files fail here and not later
            if img.mode.startswith("I;16"):  # 16-bit grayscale PNG: keep the top 8 bits, not a clipped copy
                gray = (np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)
                arr = gray if channels == "gray" else np.repeat(gray[:, :, None], 3, axis=2)
            else:
                arr = np.asarray(img.convert("RGB" if channels == "rgb" else "L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, PILImage.DecompressionBombError) as exc:
        raise GeocnnError(f"{path}: corrupt or not an image ({exc}). Replace the file with a valid JPEG/PNG/FITS/"
                          "GeoTIFF image or remove its row from the catalog.") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _load_fits(path: Path, channels: str) -> np.ndarray:
    try:
        from astropy.io import fits  # optional extra: only FITS users need astropy
    except ImportError:
        raise GeocnnError(f"{path}: reading FITS images needs astropy: pip install 'geocnn[fits]'.") from None
    try:
        with fits.open(path, memmap=False) as hdul:
            data = next((h.data for h in hdul if getattr(h, "data", None) is not None and h.data.ndim >= 2), None)
            if data is None:
                raise GeocnnError(f"{path}: FITS file holds no image data (no HDU with a 2-D or 3-D array). "
                                  "Replace the file or remove its row.")
            arr = np.asarray(data, dtype=np.float32)
    except GeocnnError:
        raise
    except Exception as exc:  # noqa: BLE001 - astropy raises many types for damaged files
        raise GeocnnError(f"{path}: corrupt or not a FITS image ({exc}). Replace the file or remove its row.") from None
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim != 3:
        raise GeocnnError(f"{path}: FITS image has {arr.ndim} dimensions; expected 2 (one band) or 3 (bands-first).")
    if channels == "gray" and arr.shape[0] > 1:
        arr = arr.mean(axis=0, keepdims=True, dtype=np.float32)
    return np.ascontiguousarray(arr)


def _load_array(path: Path, nodata: float | None) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                keys = list(loaded.keys())
                if NPZ_KEY in keys:
                    arr = loaded[NPZ_KEY]
                elif len(keys) == 1:
                    arr = loaded[keys[0]]
                else:
                    raise GeocnnError(f"{path}: the .npz holds arrays {keys} and none is named '{NPZ_KEY}'; save the "
                                      f"bands as np.savez(path, {NPZ_KEY}=array) (bands, height, width).")
        else:
            arr = loaded
    except GeocnnError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError/OSError/zipfile errors for bad files
        raise GeocnnError(f"{path}: not a readable .npy/.npz array ({exc}); object arrays (pickles) are never "
                          "loaded. Save plain numeric arrays with numpy.save.") from None
    if arr.dtype.kind not in "biuf":
        raise GeocnnError(f"{path}: array of dtype {arr.dtype}; tiles must be numeric (bands, height, width).")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise GeocnnError(f"{path}: array of shape {arr.shape}; expected (bands, height, width) or (height, width).")
    if arr.shape[0] > 64 and arr.shape[2] <= 64:
        raise GeocnnError(f"{path}: array of shape {arr.shape} looks band-last (height, width, bands); save it "
                          "band-first as (bands, height, width), e.g. np.moveaxis(a, -1, 0).")
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
        bad = ~np.isfinite(arr)
        if nodata is not None:
            bad |= arr == np.float32(nodata)
        arr[bad] = np.nan
    elif nodata is not None:
        arr = arr.astype(np.float32)
        arr[arr == np.float32(nodata)] = np.nan
    return np.ascontiguousarray(arr)


def crop_resize(image: np.ndarray, crop: int | None, size: int, source: str = "image") -> np.ndarray:
    """Centre-crop ``crop`` pixels of a (C, H, W) image (None: the whole image) and resize to ``size`` x ``size``.

    uint8 bands are resized with PIL (bilinear), others with antialiased bilinear interpolation; the dtype is kept.
    Dieleman et al. 2015: 207 of 424 px, then 69 px.

    Raises:
        GeocnnError: when the image is smaller than the crop (naming data.crop and the largest that fits).
    """
    c, h, w = image.shape
    if crop is None:
        crop = min(h, w)
    if crop > min(h, w):
        raise GeocnnError(f"{source}: image is {w}x{h} px, smaller than data.crop={crop}. "
                          f"Lower data.crop to at most {min(h, w)}.")
    top, left = (h - crop) // 2, (w - crop) // 2
    cut = image[:, top:top + crop, left:left + crop]
    if crop == size:
        return np.ascontiguousarray(cut)
    if cut.dtype == np.uint8:
        bands = [np.asarray(PILImage.fromarray(b).resize((size, size), PILImage.Resampling.BILINEAR)) for b in cut]
        return np.stack(bands)
    t = torch.from_numpy(np.ascontiguousarray(cut, dtype=np.float32))[None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0].numpy()
    return out.astype(cut.dtype, copy=False) if cut.dtype.kind == "f" else out


def location(path: str | Path) -> Path | str:
    """A local path (``~`` expanded) as a Path; a remote URI (s3://, gs://, https://) as text, unchanged (Path()
    would turn ``s3://`` into ``s3:/``)."""
    return str(path) if is_uri(path) else Path(path).expanduser()


def folder_of(path: str | Path) -> Path | str:
    """The folder holding a local file, or the folder URI holding a remote object."""
    return uris.parent(str(path)) if is_uri(path) else Path(path).parent


def _name(path: str | Path) -> str:
    return uris.name(str(path)) if is_uri(path) else Path(path).name


def _stem(path: str | Path) -> str:
    return os.path.splitext(_name(path))[0]


def _suffix(path: str | Path) -> str:
    return os.path.splitext(_name(path))[1].lower()


def _below(uri: str, base: str) -> bool:
    """Whether ``uri`` lies below the folder URI ``base``."""
    return uri.startswith(base.rstrip("/") + "/")


def _under(base: Path | str, relative: str) -> Path | str:
    """``relative`` below a local folder or a folder URI (``..`` resolved, never above the bucket)."""
    return uris.join(base, relative) if is_uri(base) else Path(base) / Path(relative).expanduser()


def relative_name(path: str | Path, root: str | Path) -> str:
    """The POSIX path of a file (or object URI) below ``root``."""
    if is_uri(path):
        text = str(path)
        return text[len(str(root).rstrip("/")) + 1:] if _below(text, str(root)) else uris.name(text)
    return Path(path).relative_to(root).as_posix()


def _walk_order(relative: str) -> list[tuple[int, str]]:
    """Sort key putting a listing in os.walk order: a folder's files (sorted) before its subfolders (sorted)."""
    parts = relative.split("/")
    return [(1, p) for p in parts[:-1]] + [(0, parts[-1])]


def walk_images(root: Path | str) -> list[Path] | list[str]:
    """All image files under ``root`` (sorted as os.walk visits them, hidden entries skipped): one os.walk, or one
    listing of a folder URI (``s3://bucket/cutouts/``), whose files come back as URIs."""
    if is_uri(root):
        found = [u for u in list_files(str(root)) if _suffix(u) in IMAGE_SUFFIXES]
        return sorted(found, key=lambda u: _walk_order(relative_name(u, root)))
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                out.append(Path(dirpath) / name)
    return out


def subfolders(root: Path | str) -> list[Path] | list[str]:
    """The (non-hidden) folders directly inside a local folder or a folder URI, sorted by name."""
    if is_uri(root):
        base = str(root).rstrip("/")
        relative = (relative_name(u, base) for u in list_files(base))
        return [f"{base}/{n}" for n in sorted({r.split("/", 1)[0] for r in relative if "/" in r})]
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))


def _index(paths: Sequence[Path | str]) -> dict[str, Path | str]:
    index: dict[str, Path | str] = {}
    rank = {s: i for i, s in enumerate(IMAGE_SUFFIXES)}
    for path in paths:
        old = index.get(_stem(path))
        if old is None or rank[_suffix(path)] < rank[_suffix(old)]:
            index[_stem(path)] = path
    return index


def find_image_files(root: Path | str) -> dict[str, Path | str]:
    """Index every image under ``root`` (a folder or a folder URI) by file stem, with one walk or listing.

    When a stem occurs more than once the path chosen is deterministic: the preferred suffix (in
    ``IMAGE_SUFFIXES`` order), then the first path in sorted order.
    """
    return _index(walk_images(location(root)))


def inside(path: Path | str, roots: Sequence[Path | str]) -> bool:
    """Whether ``path`` (symlinks resolved) lies inside one of ``roots``; a URI inside one of the folder URIs."""
    if is_uri(path):
        return any(is_uri(r) and _below(str(path), str(r)) for r in roots)
    real = Path(os.path.realpath(path))
    return any(not is_uri(r) and real.is_relative_to(os.path.realpath(r)) for r in roots)


def file_root(catalog: Path | str, images: Path | str | None, key: str = "data.images") -> Path | str:
    """The folder relative file paths resolve against: ``images`` (checked to exist; a folder URI such as
    ``s3://bucket/cutouts/`` is a prefix holding objects), else the catalog's folder."""
    if images is None:
        return folder_of(catalog)
    root = location(images)
    if is_uri(root):
        root = str(root).rstrip("/")
        if uris.scheme(root) not in ("s3", "gs") or uris.is_dir(root):  # HTTP has no folders to check
            return root
    elif root.is_dir():
        return root
    raise GeocnnError(f"{root}: folder ({key}) does not exist or is not a folder. Fix {key} "
                      f"or leave it out to use the catalog's folder ({folder_of(catalog)}).")


class _Files:
    """Existence checks of candidate image paths: local files by stat; objects below an s3:// or gs:// base by one
    listing of that base (not a request per row); other URIs by a request each."""

    def __init__(self, bases: Sequence[Path | str]) -> None:
        self.bases = [str(b) for b in bases if is_uri(b) and uris.scheme(str(b)) in ("s3", "gs")]
        self.listed: dict[str, list[str]] = {}
        self.known: dict[str, set[str]] = {}

    def listing(self, base: str) -> list[str]:
        if base not in self.listed:
            self.listed[base] = list_files(base)
            self.known[base] = set(self.listed[base])
        return self.listed[base]

    def is_file(self, path: Path | str) -> bool:
        if not is_uri(path):
            return Path(path).is_file()
        text = str(path)
        base = next((b for b in self.bases if _below(text, b)), None)
        hidden = base is not None and any(p.startswith(".") for p in relative_name(text, base).split("/"))
        if base is None or hidden:  # listings skip hidden parts
            return uris.is_file(text)
        self.listing(base)
        return text in self.known[base]

    def images(self, root: Path | str) -> list[Path] | list[str]:
        if str(root) in self.bases:
            found = [u for u in self.listing(str(root)) if _suffix(u) in IMAGE_SUFFIXES]
            return sorted(found, key=lambda u: _walk_order(relative_name(u, root)))
        return walk_images(root)


def _same(a: Path | str, b: Path | str) -> bool:
    if is_uri(a) or is_uri(b):
        return str(a).rstrip("/") == str(b).rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def resolve_files(ids: pd.Series, files: pd.Series | None, file_column: str | None, root: Path | str,
                  catalog_dir: Path | str, templates: Sequence[str], source: str, allow_outside_root: bool = False,
                  key: str = "data.images") -> list[str]:
    """Absolute path (or URI) of every row's image: the file column (against ``root``, then the catalog folder),
    the templates, else a by-name lookup in one index of ``root``; every path is checked to exist and, unless
    allowed, to lie inside ``root`` or the catalog folder (symlinks resolved; for folder URIs, below them: a
    relative path never climbs above the bucket)."""
    bases = [root] if _same(root, catalog_dir) else [root, catalog_dir]
    lookup = _Files(bases)
    index: dict[str, Path | str] | None = None
    out: list[str] = []
    missing: list[tuple[int, str]] = []
    for i, sample_id in enumerate(ids.tolist()):
        tried: list[Path | str] = []
        value = files.iloc[i] if files is not None else None
        names: list[str] = []
        if isinstance(value, str) and value.strip():
            text = value.strip()
            if is_uri(text) or Path(text).expanduser().is_absolute():
                tried.append(location(text))
            else:
                tried += [_under(b, text) for b in bases]
            names.append(_stem(text))
        tried += [_under(root, t.format(id=sample_id)) for t in templates]
        found = next((p for p in tried if lookup.is_file(p)), None)
        if found is None:
            if index is None:
                index = _index(lookup.images(root))
            names.append(sample_id)
            found = next((index[n] for n in names if n in index), None)
        if found is None:
            if files is not None and not (isinstance(value, str) and value.strip()):
                what = f"the file in column '{file_column}' is empty"
            else:
                what = "tried " + ", ".join(str(p) for p in tried) if tried else "no file column"
            missing.append((i, f"{what}; no {sample_id}.png/.jpg/.jpeg/.fits/.tif/.npy/.npz under {root}"))
            continue
        real = str(found) if is_uri(found) else os.path.realpath(found)
        if not allow_outside_root and not inside(found, bases):
            raise GeocnnError(
                f"{source}: row {i + 2} (id {sample_id!r}): the image path {str(value or found)!r} resolves to "
                f"{real}, outside the data root ({', '.join(str(b) for b in bases)}). Catalog "
                f"paths may not leave the image folder or the catalog's folder: move the files there, point "
                f"{key} at their folder, or set data.allow_outside_root: true (geocnn predict: "
                "--allow-outside-root) if this is intended.")
        out.append(str(found) if is_uri(found) else os.path.abspath(found))
    if missing:
        i, detail = missing[0]
        more = f" ({len(missing)} of {len(ids)} rows have no image; first rows: " \
               f"{[r + 2 for r, _ in missing[:5]]})" if len(missing) > 1 else ""
        raise GeocnnError(f"{source}: row {i + 2} (id {ids.iloc[i]!r}): image file not found: {detail}.{more} "
                          f"Fix the path in the catalog, point {key} at the folder holding the files, "
                          "or remove the row.")
    return out


def is_folder(path: str | Path) -> bool:
    """Whether a local path or a URI (a prefix holding objects) is a folder."""
    return uris.is_dir(str(path)) if is_uri(path) else Path(path).expanduser().is_dir()
