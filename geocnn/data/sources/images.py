"""Galaxy chip preprocessing (Dieleman et al. 2015): centre crop, then resize; shared by store and predict."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from geocnn.errors import GeocnnError


def crop_resize(image: np.ndarray, crop: int, size: int, source: str = "image") -> np.ndarray:
    """Centre-crop ``crop`` pixels of a (C, H, W) image and resize to ``size`` (antialiased); keeps the dtype.

    Args:
        image: band-first array (uint8 from JPEG/PNG, float from FITS).
        crop: side of the centre crop in pixels; images smaller than it are an error.
        size: side of the output chip.
        source: file name for error messages.
    """
    c, h, w = image.shape
    if crop > min(h, w):
        raise GeocnnError(f"{source}: image is {w}x{h} px, smaller than data.crop={crop}. "
                          f"Lower data.crop to at most {min(h, w)}.")
    top, left = (h - crop) // 2, (w - crop) // 2
    cut = image[:, top:top + crop, left:left + crop]
    if crop == size:
        return np.ascontiguousarray(cut)
    if cut.dtype == np.uint8:
        bands = [np.asarray(Image.fromarray(b).resize((size, size), Image.Resampling.BILINEAR)) for b in cut]
        return np.stack(bands)
    t = torch.from_numpy(np.ascontiguousarray(cut, dtype=np.float32))[None]
    return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0].numpy()
