"""scikit-learn's bundled handwritten digits (1,797 real scans, no download) written as 32x32 PNGs and a catalog."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from geocnn.atomic import atomic_path
from geocnn.errors import GeocnnError

LEVELS = 16
"""Largest value of a digits pixel: each is the count of ink pixels in a 4x4 block of the 32x32 scan (0-16)."""
DIGIT_PX = 28
"""Side of the digit after resizing, as MNIST's 28x28 digits."""
PAD = 2
"""Background pixels added on each side: 28 + 2 + 2 = 32, as LeCun et al. (1998) padded MNIST for LeNet-5."""
SIZE = DIGIT_PX + 2 * PAD
"""Side of the written images (32)."""
CATALOG_COLUMNS = ["id", "file", "digit"]
"""Columns of ``catalog.csv``: ``digit0000``..., ``images/<id>.png`` (relative to the catalog), the digit 0-9."""


def digit_image(values: np.ndarray) -> np.ndarray:
    """One 8x8 digits image (values 0-16) as the 32x32 uint8 image written for it.

    The values are scaled to 0-255 (x 255/16), resized to 28x28 with PIL's bilinear interpolation in floating point
    (pixel centres aligned, edges clamped), rounded to the nearest integer, and padded with 2 px of background (0)
    on each side, as LeCun et al. (1998) padded MNIST's 28x28 digits to LeNet-5's 32x32 input. Ink is bright.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.shape != (8, 8):
        raise GeocnnError(f"a digits image is 8x8; got shape {values.shape}")
    scaled = Image.fromarray(values * np.float32(255.0 / LEVELS))
    big = np.asarray(scaled.resize((DIGIT_PX, DIGIT_PX), Image.Resampling.BILINEAR))
    digit = np.clip(np.rint(big), 0, 255).astype(np.uint8)
    return np.pad(digit, PAD, constant_values=0)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_if_changed(path: Path, content: bytes) -> bool:
    """Write ``content`` atomically unless ``path`` already holds exactly it; True when written."""
    if path.is_file() and path.read_bytes() == content:
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)
    return True


def write_digits(folder: Path) -> Path:
    """Write scikit-learn's handwritten digits into ``folder``; return the path of its ``catalog.csv``.

    The data: the 1,797 digits of ``sklearn.datasets.load_digits`` (the test part of UCI's "Optical Recognition of
    Handwritten Digits": 32x32 scans of digits written by 13 people, each 4x4 block reduced to its count of ink
    pixels, so 8x8 images of values 0-16; about 180 of each digit), shipped inside the scikit-learn wheel. Each is
    written as ``images/<id>.png``, an 8-bit grayscale 32x32 image made by :func:`digit_image` (scaled to 0-255,
    bilinear to 28x28, padded by 2 px to 32x32 as LeNet-5's MNIST input), and listed in ``catalog.csv`` with
    columns :data:`CATALOG_COLUMNS` (``id`` ``digit0000``... in scikit-learn's order, ``file``, ``digit``).

    Every file is written atomically (a temporary sibling renamed into place, catalog last), and only where the
    folder does not already hold exactly its content: a complete folder is reused as it is, and a run killed midway
    leaves no partial file.

    Raises:
        GeocnnError: when ``folder`` is an existing file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise GeocnnError(f"digits folder {folder} is an existing file; pass a folder path (data.store_root's "
                          "parent/digits for data.format=digits).")
    digits = load_digits()
    rows = []
    for index, (values, label) in enumerate(zip(digits.images, digits.target)):
        did = f"digit{index:04d}"
        rel = f"images/{did}.png"
        _write_if_changed(folder / rel, _png(digit_image(values)))
        rows.append([did, rel, int(label)])
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CATALOG_COLUMNS)
    writer.writerows(rows)
    catalog = folder / "catalog.csv"
    _write_if_changed(catalog, text.getvalue().encode("utf-8"))
    return catalog
