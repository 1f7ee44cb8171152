"""Augmentation: exact dihedral test-time views, rotation views, and the random training transforms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from geocnn.config import AugmentConfig
from geocnn.data.augment import augment_batch, tta_views

OFF = {"rotate": False, "flip": False, "translate": 0.0, "zoom": 0.0, "brightness": 0.0}


def _asymmetric(b: int = 2, c: int = 3, h: int = 7, w: int = 7) -> torch.Tensor:
    """Distinct random values everywhere: no rotation or flip maps it onto itself or another view."""
    return torch.randperm(b * c * h * w, generator=torch.Generator().manual_seed(0)).float().view(b, c, h, w)


def _dihedral_numpy(img: np.ndarray) -> list[np.ndarray]:
    """The 8 dihedral transforms of (..., H, W), written with numpy independently of geocnn."""
    out = []
    for k in range(4):
        r = np.rot90(img, k, axes=(-2, -1))
        out += [r, np.flip(r, -1)]
    return out


def _blob(size: int = 32, sx: float = 5.0, sy: float = 2.0, b: int = 6, bump: bool = False) -> torch.Tensor:
    """A centred elongated Gaussian (rotations change it, but keep its flux); ``bump`` adds an off-centre
    knot so that the image has no rotational symmetry at all."""
    yy, xx = torch.meshgrid(torch.arange(size) - (size - 1) / 2, torch.arange(size) - (size - 1) / 2, indexing="ij")
    img = torch.exp(-(xx ** 2) / (2 * sx ** 2) - (yy ** 2) / (2 * sy ** 2))
    if bump:
        img = img + 0.7 * torch.exp(-((xx - 6) ** 2 + (yy - 3) ** 2) / 2)
    return img.expand(b, 1, size, size).clone()


# ----------------------------------------------------------------------------------------------- tta_views


def test_eight_views_are_the_dihedral_group() -> None:
    x = _asymmetric()
    views = tta_views(x, 8)
    assert len(views) == 8
    for a, b in itertools.combinations(range(8), 2):
        assert not torch.equal(views[a], views[b]), (a, b)
    expected = _dihedral_numpy(x.numpy())
    matched = []
    for v in views:
        assert v.shape == x.shape and v.dtype == x.dtype
        hits = [i for i, e in enumerate(expected) if np.array_equal(v.numpy(), e)]
        assert len(hits) == 1  # each view is exactly one rot90/flip combination
        matched.append(hits[0])
    assert sorted(matched) == list(range(8))  # and together they are all 8 of them
    assert torch.equal(views[0], x)


def test_eight_view_average_is_dihedrally_symmetric() -> None:
    x = _asymmetric(1, 1, 6, 6)
    avg = torch.stack(tta_views(x, 8)).mean(0)
    torch.testing.assert_close(torch.rot90(avg, 1, dims=(-2, -1)), avg)
    torch.testing.assert_close(avg.flip(-1), avg)
    torch.testing.assert_close(avg.flip(-2), avg)
    assert not torch.allclose(avg, x)


def test_one_view_is_identity() -> None:
    x = _asymmetric()
    views = tta_views(x, 1)
    assert len(views) == 1 and torch.equal(views[0], x)


def test_two_views_are_identity_and_flip() -> None:
    x = _asymmetric()
    views = tta_views(x, 2)
    assert len(views) == 2
    assert torch.equal(views[0], x) and torch.equal(views[1], x.flip(-1))


def test_four_views_are_the_rotations() -> None:
    x = _asymmetric()
    views = tta_views(x, 4)
    assert len(views) == 4
    for k, v in enumerate(views):
        assert torch.equal(v, torch.rot90(x, k, dims=(-2, -1)))


@pytest.mark.parametrize("n", [3, 6])
def test_other_n_gives_n_rotated_views(n: int) -> None:
    x = _blob(b=2, bump=True)
    views = tta_views(x, n)
    assert len(views) == n
    for v in views:
        assert v.shape == x.shape and v.dtype == x.dtype
    torch.testing.assert_close(views[0], x, atol=1e-5, rtol=0)  # angle 0 resamples exactly onto the grid
    for a, b in itertools.combinations(range(n), 2):
        assert (views[a] - views[b]).abs().max() > 0.05
    # flux of a centred blob is kept by every rotation
    for v in views:
        assert v.sum().item() == pytest.approx(x.sum().item(), rel=0.02)


def test_six_views_include_exact_half_turn() -> None:
    x = _asymmetric(1, 2, 8, 8)
    views = tta_views(x, 6)
    torch.testing.assert_close(views[3], torch.rot90(x, 2, dims=(-2, -1)), atol=1e-3, rtol=0)


def test_twelve_views_quarter_turn_is_a_rot90() -> None:
    x = _asymmetric(1, 1, 8, 8)
    quarter = tta_views(x, 12)[3]
    candidates = [torch.rot90(x, k, dims=(-2, -1)) for k in (1, -1)]
    assert any(torch.allclose(quarter, c, atol=1e-3) for c in candidates)


def test_tta_average_of_invariant_function_unchanged() -> None:
    x = _asymmetric(3, 2, 9, 9)

    def f(t: torch.Tensor) -> torch.Tensor:  # per-band pixel mean and max: invariant under rot90 and flips
        return torch.cat([t.mean(dim=(-2, -1)), t.amax(dim=(-2, -1))], dim=1)

    for n in (1, 2, 4, 8):
        avg = torch.stack([f(v) for v in tta_views(x, n)]).mean(0)
        torch.testing.assert_close(avg, f(x))


def test_tta_average_of_equivariant_map_rotated_back_equals_map() -> None:
    # an equivariant per-pixel map g (here a pointwise square) averaged after undoing each view equals g(x)
    x = _asymmetric(1, 1, 5, 5)
    views = tta_views(x, 8)
    undone = []
    for k, v in enumerate(views):
        g = v ** 2
        if k % 2 == 1:
            g = g.flip(-1)
        undone.append(torch.rot90(g, -(k // 2), dims=(-2, -1)))
    torch.testing.assert_close(torch.stack(undone).mean(0), x ** 2)


# ----------------------------------------------------------------------------------------------- augment_batch


def test_all_options_off_returns_input_unchanged() -> None:
    x = torch.randn(4, 3, 16, 16)
    out = augment_batch(x, AugmentConfig(**OFF), torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_augment_keeps_shape_dtype_device(dtype: torch.dtype) -> None:
    x = torch.randn(5, 3, 16, 16, dtype=dtype)
    out = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all()
    assert not torch.equal(out, x)


def test_augment_is_deterministic_for_a_seeded_generator() -> None:
    x = torch.randn(6, 2, 16, 16)
    cfg = AugmentConfig(translate=0.1, zoom=0.2, brightness=0.2)
    a = augment_batch(x, cfg, torch.Generator().manual_seed(7))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(7))
    c = augment_batch(x, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # a generator advances: two calls in a row differ
    g = torch.Generator().manual_seed(7)
    assert not torch.allclose(augment_batch(x, cfg, g), augment_batch(x, cfg, g))


def test_flips_only_give_exact_flips() -> None:
    x = _asymmetric(32, 1, 5, 5)
    out = augment_batch(x, AugmentConfig(**(OFF | {"flip": True})), torch.Generator().manual_seed(0))
    kinds = []
    for i in range(len(x)):
        options = [x[i], x[i].flip(-1), x[i].flip(-2), x[i].flip(-1).flip(-2)]
        hits = [k for k, o in enumerate(options) if torch.equal(out[i], o)]
        assert len(hits) == 1, i
        kinds.append(hits[0])
    assert set(kinds) == {0, 1, 2, 3}  # all four outcomes occur in 32 draws


def test_rotation_preserves_flux_of_centred_blob() -> None:
    x = _blob(b=8)
    out = augment_batch(x, AugmentConfig(**(OFF | {"rotate": True})), torch.Generator().manual_seed(1))
    flux_in = x.sum(dim=(1, 2, 3))
    flux_out = out.sum(dim=(1, 2, 3))
    torch.testing.assert_close(flux_out, flux_in, rtol=0.03, atol=0)
    # the images were really rotated: the elongated blob changes orientation in most of them
    changed = ((out - x).abs().amax(dim=(1, 2, 3)) > 0.2).sum().item()
    assert changed >= 6
    # the peak stays at the centre
    assert torch.equal(out[:, 0, 14:18, 14:18].amax(dim=(1, 2)), out.amax(dim=(1, 2, 3)))


def test_zoom_only_keeps_centre_and_scales_blob_size() -> None:
    x = _blob(sx=3.0, sy=3.0, b=16)
    out = augment_batch(x, AugmentConfig(**(OFF | {"zoom": 0.3})), torch.Generator().manual_seed(2))
    ratio = out.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))  # flux scales with zoom**2
    assert ((ratio > 1 / 1.3 ** 2 - 0.05) & (ratio < 1.3 ** 2 + 0.05)).all()
    assert ratio.max() - ratio.min() > 0.1
    torch.testing.assert_close(out[:, 0, 15:17, 15:17], x[:, 0, 15:17, 15:17], atol=0.05, rtol=0)


@pytest.mark.parametrize("bound", [0.1, 0.3])
def test_brightness_scales_each_image_within_bound(bound: float) -> None:
    x = torch.rand(64, 3, 8, 8) + 0.5
    out = augment_batch(x, AugmentConfig(**(OFF | {"brightness": bound})), torch.Generator().manual_seed(3))
    factor = out / x
    per_image = factor.view(64, -1)
    # one factor per image, the same for every pixel and band
    torch.testing.assert_close(per_image, per_image[:, :1].expand_as(per_image))
    f = per_image[:, 0]
    assert (f >= 1 - bound - 1e-6).all() and (f <= 1 + bound + 1e-6).all()
    ratio = out.mean(dim=(1, 2, 3)) / x.mean(dim=(1, 2, 3))
    assert ((ratio >= 1 - bound - 1e-6) & (ratio <= 1 + bound + 1e-6)).all()
    # the factors really vary and span most of the range in 64 draws
    assert f.max() > 1 + bound / 2 and f.min() < 1 - bound / 2


def test_translation_moves_blob_within_bound() -> None:
    size, t = 32, 0.1
    x = torch.zeros(16, 1, size, size)
    x[:, 0, 14:18, 14:18] = 1.0
    out = augment_batch(x, AugmentConfig(**(OFF | {"translate": t})), torch.Generator().manual_seed(4))
    coords = torch.arange(size, dtype=torch.float32)
    for i in range(16):
        w = out[i, 0]
        cy = (w.sum(1) * coords).sum() / w.sum()
        cx = (w.sum(0) * coords).sum() / w.sum()
        assert abs(cx - 15.5) <= t * size + 0.5 and abs(cy - 15.5) <= t * size + 0.5
    assert not torch.allclose(out, x)


def test_rotation_by_random_angles_covers_full_circle() -> None:
    # a single bright pixel right of centre ends up at angles spread over 0-360 degrees
    size = 33
    x = torch.zeros(64, 1, size, size)
    x[:, 0, 16, 26] = 1.0
    out = augment_batch(x, AugmentConfig(**(OFF | {"rotate": True})), torch.Generator().manual_seed(5))
    angles = []
    for i in range(64):
        idx = int(out[i, 0].argmax())
        y, xx = divmod(idx, size)
        angles.append(math.atan2(y - 16, xx - 16))
    hist = np.histogram(angles, bins=4, range=(-math.pi, math.pi))[0]
    assert (hist > 0).all()


def test_rot90_and_flips_give_only_exact_dihedral_views() -> None:
    x = _asymmetric(b=64)
    cfg = AugmentConfig(**{**OFF, "flip": True, "rot90": True})
    out = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    seen = set()
    for i in range(len(x)):
        views = _dihedral_numpy(x[i].numpy())
        match = [k for k, v in enumerate(views) if np.array_equal(v, out[i].numpy())]
        assert len(match) == 1, "every output must be one exact dihedral view (no resampling)"
        seen.add(match[0])
    assert len(seen) == 8  # all 8 views occur over 64 images


def test_band_brightness_scales_each_band_separately_within_bounds() -> None:
    x = torch.ones(32, 4, 5, 5)
    out = augment_batch(x, AugmentConfig(**{**OFF, "band_brightness": 0.1}), torch.Generator().manual_seed(0))
    factors = out[:, :, 0, 0]
    assert torch.allclose(out, factors[:, :, None, None].expand_as(out))  # uniform within a band
    assert factors.min() >= 0.9 and factors.max() <= 1.1
    assert (factors.std(dim=1) > 0).all()  # bands of one image differ
