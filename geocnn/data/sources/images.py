"""Per-sample image files: JPEG/PNG, FITS, GeoTIFF and .npy/.npz read as (bands, H, W); find by id; confine paths."""

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

from geocnn.data.sources.raster import open_scene, select_bands
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
    path = Path(path)
    if channels not in ("rgb", "gray"):
        raise GeocnnError(f"channels must be 'rgb' or 'gray' (data.channels), not {channels!r}.")
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


def walk_images(root: Path) -> list[Path]:
    """All image files under ``root`` (one os.walk, sorted, hidden entries skipped)."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                out.append(Path(dirpath) / name)
    return out


def find_image_files(root: Path) -> dict[str, Path]:
    """Index every image under ``root`` by file stem, with one walk of the tree.

    When a stem occurs more than once the path chosen is deterministic: the preferred suffix (in
    ``IMAGE_SUFFIXES`` order), then the first path in sorted order.
    """
    index: dict[str, Path] = {}
    rank = {s: i for i, s in enumerate(IMAGE_SUFFIXES)}
    for path in walk_images(Path(root)):
        old = index.get(path.stem)
        if old is None or rank[path.suffix.lower()] < rank[old.suffix.lower()]:
            index[path.stem] = path
    return index


def inside(path: Path, roots: Sequence[Path]) -> bool:
    """Whether ``path`` (symlinks resolved) lies inside one of ``roots``."""
    real = Path(os.path.realpath(path))
    return any(real.is_relative_to(os.path.realpath(r)) for r in roots)


def file_root(catalog: Path, images: Path | str | None, key: str = "data.images") -> Path:
    """The folder relative file paths resolve against: ``images`` (checked to exist), else the catalog's folder."""
    if images is None:
        return catalog.parent
    root = Path(images).expanduser()
    if not root.is_dir():
        raise GeocnnError(f"{root}: folder ({key}) does not exist or is not a folder. Fix {key} "
                          f"or leave it out to use the catalog's folder ({catalog.parent}).")
    return root


def resolve_files(ids: pd.Series, files: pd.Series | None, file_column: str | None, root: Path, catalog_dir: Path,
                  templates: Sequence[str], source: str, allow_outside_root: bool = False,
                  key: str = "data.images") -> list[str]:
    """Absolute path of every row's image: the file column (against ``root``, then the catalog folder),
    the templates, else a by-name lookup in one index of ``root``; every path is checked to exist and, unless
    allowed, to lie inside ``root`` or the catalog folder (symlinks resolved)."""
    bases = [root] if root.resolve() == catalog_dir.resolve() else [root, catalog_dir]
    index: dict[str, Path] | None = None
    out: list[str] = []
    missing: list[tuple[int, str]] = []
    for i, sample_id in enumerate(ids.tolist()):
        tried: list[Path] = []
        value = files.iloc[i] if files is not None else None
        names: list[str] = []
        if isinstance(value, str) and value.strip():
            rel = Path(value.strip()).expanduser()
            tried += [rel] if rel.is_absolute() else [b / rel for b in bases]
            names.append(rel.stem)
        tried += [root / t.format(id=sample_id) for t in templates]
        found = next((p for p in tried if p.is_file()), None)
        if found is None:
            if index is None:
                index = find_image_files(root)
            names.append(sample_id)
            found = next((index[n] for n in names if n in index), None)
        if found is None:
            if files is not None and not (isinstance(value, str) and value.strip()):
                what = f"the file in column '{file_column}' is empty"
            else:
                what = "tried " + ", ".join(str(p) for p in tried) if tried else "no file column"
            missing.append((i, f"{what}; no {sample_id}.png/.jpg/.jpeg/.fits/.tif/.npy/.npz under {root}"))
            continue
        if not allow_outside_root and not inside(found, bases):
            raise GeocnnError(
                f"{source}: row {i + 2} (id {sample_id!r}): the image path {str(value or found)!r} resolves to "
                f"{os.path.realpath(found)}, outside the data root ({', '.join(str(b) for b in bases)}). Catalog "
                f"paths may not leave the image folder or the catalog's folder: move the files there, point "
                f"{key} at their folder, or set data.allow_outside_root: true (geocnn predict: "
                "--allow-outside-root) if this is intended.")
        out.append(os.path.abspath(found))
    if missing:
        i, detail = missing[0]
        more = f" ({len(missing)} of {len(ids)} rows have no image; first rows: " \
               f"{[r + 2 for r, _ in missing[:5]]})" if len(missing) > 1 else ""
        raise GeocnnError(f"{source}: row {i + 2} (id {ids.iloc[i]!r}): image file not found: {detail}.{more} "
                          f"Fix the path in the catalog, point {key} at the folder holding the files, "
                          "or remove the row.")
    return out
