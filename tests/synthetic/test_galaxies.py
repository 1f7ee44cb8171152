"""Synthetic galaxies: determinism, catalog contents, image geometry and features that separate the classes."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy.stats import spearmanr

from geocnn.errors import GeocnnError
from geocnn.synthetic.galaxies import CATALOG_COLUMNS, CLASSES, make_galaxies, render_galaxy

N = 40
SIZE = 64


def _read_catalog(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a catalog.csv."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _load(path: Path) -> np.ndarray:
    """Pixels of a PNG as a numpy array."""
    with Image.open(path) as im:
        return np.asarray(im).copy()


def _measure(img: np.ndarray) -> dict[str, float]:
    """Simple image features: centroid offset, flux inside the central 60%, moments axis ratio, profile bump, colour.

    Pixels more than 3 sigma above the sky (estimated on the border) are the source mask; the galaxy is the
    (slightly dilated) connected part holding the most flux, so stars near the edges do not disturb it.
    """
    lum = img.astype(np.float64).mean(axis=2)
    s = lum.shape[0]
    border = np.concatenate([lum[:4].ravel(), lum[-4:].ravel(), lum[:, :4].ravel(), lum[:, -4:].ravel()])
    sky = float(np.median(border))
    noise = 1.4826 * float(np.median(np.abs(border - sky)))
    sig = lum - sky
    mask = sig > 3.0 * noise + 1.0
    labels, n_lab = ndimage.label(ndimage.binary_dilation(mask, iterations=2))
    assert n_lab > 0, "no source above the sky noise"
    flux = ndimage.sum(sig, labels, range(1, n_lab + 1))
    main = (labels == 1 + int(np.argmax(flux))) & mask
    w = np.where(main, sig, 0.0)
    yy, xx = np.mgrid[:s, :s].astype(np.float64)
    tot = w.sum()
    cx, cy = (w * xx).sum() / tot, (w * yy).sum() / tot
    mxx = (w * (xx - cx) ** 2).sum() / tot
    myy = (w * (yy - cy) ** 2).sum() / tot
    mxy = (w * (xx - cx) * (yy - cy)).sum() / tot
    ev, evec = np.linalg.eigh(np.array([[mxx, mxy], [mxy, myy]]))
    q = float(np.sqrt(ev[0] / ev[1]))

    all_src = np.where(mask, sig, 0.0)
    a, b = int(round(0.2 * s)), int(round(0.8 * s))
    inside = float(all_src[a:b, a:b].sum() / all_src.sum())

    # Profile in elliptical annuli (shape from the moments), 1 px wide; "rise" = largest increase after a dip.
    ang = np.arctan2(evec[1, 1], evec[0, 1])
    u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
    v = (yy - cy) * np.cos(ang) - (xx - cx) * np.sin(ang)
    r = np.hypot(u, v / q).ravel()
    edges = np.arange(0.0, 3.0 * np.sqrt(ev[1]), 1.0)
    idx = np.digitize(r, edges)
    vals = sig.ravel()
    prof = np.array([vals[idx == i].mean() for i in range(1, len(edges)) if np.any(idx == i)])
    rise = float(np.max(prof - np.minimum.accumulate(prof)) / max(prof[0], 1e-9))

    red_minus_blue = float(((img[..., 0].astype(np.float64) - img[..., 2]) * main).sum() / main.sum())
    centre = (s - 1) / 2.0
    return {"offset": float(np.hypot(cx - centre, cy - centre) / s), "inside": inside, "q": q, "rise": rise,
            "red_minus_blue": red_minus_blue}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[dict[str, str]]]:
    """One small generated set shared by the tests of this module."""
    catalog = make_galaxies(tmp_path_factory.mktemp("synthetic"), N, size=SIZE, seed=3)
    header, rows = _read_catalog(catalog)
    return catalog, header, rows


@pytest.fixture(scope="module")
def features(sample: tuple[Path, list[str], list[dict[str, str]]]) -> dict[str, list[dict[str, float]]]:
    """Measured features of every image, grouped by catalog morphology."""
    catalog, _, rows = sample
    out: dict[str, list[dict[str, float]]] = {c: [] for c in CLASSES}
    for row in rows:
        m = _measure(_load(catalog.parent / row["file"]))
        m["axis_ratio_label"] = float(row["axis_ratio"])
        out[row["morphology"]].append(m)
    return out


def test_same_seed_is_identical_and_other_seed_differs(tmp_path: Path) -> None:
    runs = {name: make_galaxies(tmp_path / name, 10, size=48, seed=seed) for name, seed in
            (("a", 5), ("b", 5), ("c", 6))}
    assert runs["a"].read_bytes() == runs["b"].read_bytes()
    assert runs["a"].read_bytes() != runs["c"].read_bytes()
    _, rows = _read_catalog(runs["a"])
    for row in rows:
        a, b, c = (_load(runs[name].parent / row["file"]) for name in ("a", "b", "c"))
        assert np.array_equal(a, b), row["id"]
        assert not np.array_equal(a, c), row["id"]

    img1, p1 = render_galaxy("spiral", 40, np.random.default_rng(11))
    img2, p2 = render_galaxy("spiral", 40, np.random.default_rng(11))
    img3, _ = render_galaxy("spiral", 40, np.random.default_rng(12))
    assert np.array_equal(img1, img2) and p1 == p2
    assert not np.array_equal(img1, img3)


def test_catalog_columns_balance_and_label_ranges(sample: tuple[Path, list[str], list[dict[str, str]]]) -> None:
    catalog, header, rows = sample
    assert catalog.name == "catalog.csv"
    assert header == CATALOG_COLUMNS == ["id", "file", "morphology", "axis_ratio", "bulge_fraction"]
    assert len(rows) == N
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == N and all(re.fullmatch(r"syn\d{6}", i) for i in ids)
    for row in rows:
        assert row["file"] == f"images/{row['id']}.png"
        assert (catalog.parent / row["file"]).is_file()
    counts = {c: sum(row["morphology"] == c for row in rows) for c in CLASSES}
    assert counts == {c: N // len(CLASSES) for c in CLASSES}
    assert [row["morphology"] for row in rows] != [CLASSES[i % 5] for i in range(N)], "labels should be shuffled"

    for row in rows:
        q, bf, kind = float(row["axis_ratio"]), float(row["bulge_fraction"]), row["morphology"]
        assert 0.0 < q <= 1.0 and 0.0 <= bf <= 1.0, row
        if kind == "edge_on":
            assert 0.08 <= q <= 0.2, row
        else:
            assert q >= 0.4, row
        if kind == "elliptical":
            assert bf == 1.0, row
        elif kind in ("spiral", "barred", "ring"):
            assert 0.0 < bf < 0.9, row
    qs = [float(row["axis_ratio"]) for row in rows if row["morphology"] != "edge_on"]
    assert np.std(qs) > 0.05, "axis ratios should vary"


def test_images_are_rgb_uint8_of_requested_size(sample: tuple[Path, list[str], list[dict[str, str]]]) -> None:
    catalog, _, rows = sample
    for row in rows:
        with Image.open(catalog.parent / row["file"]) as im:
            assert im.mode == "RGB" and im.size == (SIZE, SIZE)
        arr = _load(catalog.parent / row["file"])
        assert arr.dtype == np.uint8 and arr.shape == (SIZE, SIZE, 3)
        assert int(arr.max()) - int(arr.min()) > 100, f"{row['id']} has almost no contrast"
        assert np.abs(arr[..., 0].astype(int) - arr[..., 2]).mean() > 1.0, f"{row['id']} looks grey"
    img, params = render_galaxy("ring", 32, np.random.default_rng(0))
    assert img.dtype == np.uint8 and img.shape == (32, 32, 3)
    assert all(isinstance(v, float) for v in params.values())
    assert {"axis_ratio", "bulge_fraction", "position_angle", "psf_fwhm"} <= set(params)


def test_galaxy_is_centred_and_inside_the_central_crop(features: dict[str, list[dict[str, float]]]) -> None:
    for kind, ms in features.items():
        for m in ms:
            assert m["offset"] < 0.05, (kind, m)
            assert m["inside"] > 0.9, (kind, m)


def test_edge_on_is_much_more_elongated_than_elliptical(features: dict[str, list[dict[str, float]]]) -> None:
    edge = [m["q"] for m in features["edge_on"]]
    ell = [m["q"] for m in features["elliptical"]]
    assert np.mean(edge) < 0.5 * np.mean(ell), (edge, ell)
    assert max(edge) < 0.45 < min(ell), (edge, ell)


def test_measured_axis_ratio_follows_the_label(features: dict[str, list[dict[str, float]]]) -> None:
    ms = [m for kind in CLASSES for m in features[kind]]
    rho = spearmanr([m["axis_ratio_label"] for m in ms], [m["q"] for m in ms]).statistic
    assert rho > 0.6, rho


def test_rings_show_a_radial_profile_bump(features: dict[str, list[dict[str, float]]]) -> None:
    bumped = {kind: float(np.mean([m["rise"] > 0.05 for m in ms])) for kind, ms in features.items()}
    assert bumped["ring"] >= 0.5, bumped
    assert bumped["elliptical"] <= 0.125, bumped
    assert bumped["ring"] > bumped["spiral"] + 0.3, bumped


def test_ellipticals_are_redder_than_spirals(features: dict[str, list[dict[str, float]]]) -> None:
    ell = np.mean([m["red_minus_blue"] for m in features["elliptical"]])
    spi = np.mean([m["red_minus_blue"] for m in features["spiral"]])
    assert ell > spi + 10.0, (ell, spi)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be a positive integer"),
        ({"n": 2.5}, "n must be a positive integer"),
        ({"n": 3, "size": 16}, "size >= 32"),
        ({"n": 3, "seed": -1}, "non-negative integer"),
    ],
)
def test_make_galaxies_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(GeocnnError, match=message):
        make_galaxies(tmp_path / "out", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "out" / "catalog.csv").exists()


def test_bad_kind_and_file_as_out_dir_are_reported(tmp_path: Path) -> None:
    with pytest.raises(GeocnnError, match="use one of elliptical, spiral"):
        render_galaxy("blob", 64, np.random.default_rng(0))
    with pytest.raises(GeocnnError, match="size >= 32"):
        render_galaxy("spiral", 20, np.random.default_rng(0))
    target = tmp_path / "taken"
    target.write_text("x")
    with pytest.raises(GeocnnError, match="existing file"):
        make_galaxies(target, 2, size=32)
