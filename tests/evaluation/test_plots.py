"""Tests for geocnn.evaluation.plots: valid PNGs of the expected size, atomic writes, figures closed."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from geocnn.evaluation.plots import DPI, plot_confusion, plot_montage, plot_pred_vs_true


def _png(path: Path) -> tuple[int, int]:
    """Check ``path`` is a complete, decodable PNG; return its pixel size (width, height)."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        return img.size


def _assert_size(size: tuple[int, int], inches: tuple[float, float]) -> None:
    """Pixel size is figsize * DPI, within a couple of pixels of rounding."""
    w, h = size
    assert abs(w - inches[0] * DPI) <= 2 and abs(h - inches[1] * DPI) <= 2, (size, inches)


def _only(folder: Path, *names: str) -> None:
    """The folder holds exactly ``names`` (no leftover temporary files)."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def test_pred_vs_true_grid_groups_and_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=(60, 3))
    groups = np.array(["sdss", "decals"] * 30)
    out = plot_pred_vs_true(y, y + rng.normal(scale=0.2, size=y.shape), ["a", "b", "c"], tmp_path / "pvt.png",
                            groups=groups)
    assert out == tmp_path / "pvt.png"
    _assert_size(_png(out), (3.4 * 3 + 0.2, 3.3 + 0.4))  # 3 targets: one row of 3
    _only(tmp_path, "pvt.png")
    assert plt.get_fignums() == []


def test_pred_vs_true_caps_at_12_targets_and_1d(tmp_path: Path) -> None:
    y = np.random.default_rng(1).uniform(size=(40, 14))
    out = plot_pred_vs_true(y, y[::-1], [f"t{i}" for i in range(14)], tmp_path / "sub" / "many.png")
    _assert_size(_png(out), (3.4 * 4 + 0.2, 3.3 * 3))  # 12 panels in a 3 x 4 grid; parent folder created
    five = plot_pred_vs_true(y[:, :5], y[:, :5], list("abcde"), tmp_path / "sub" / "five.png")
    _assert_size(_png(five), (3.4 * 3 + 0.2, 3.3 * 2))  # 5 targets: 3 columns
    one = plot_pred_vs_true(y[:, 0], np.full(40, 0.5), ["z"], tmp_path / "one.png")  # constant prediction is fine
    _assert_size(_png(one), (3.4 + 0.2, 3.3))
    with pytest.raises(ValueError, match="shape"):
        plot_pred_vs_true(y, y[:, :3], ["a"], tmp_path / "bad.png")
    _only(tmp_path, "sub", "one.png")


def test_confusion_png(tmp_path: Path) -> None:
    cm = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])  # an empty row must not divide by zero
    out = plot_confusion(cm, ["smooth", "disk", "artifact"], tmp_path / "cm.png")
    _assert_size(_png(out), (5.0, 4.0))
    with pytest.raises(ValueError, match="shape"):
        plot_confusion(cm, ["a", "b"], tmp_path / "bad.png")
    _only(tmp_path, "cm.png")


def _non_white(path: Path) -> int:
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"))
    return int((arr.min(axis=2) < 250).sum())


def test_montage_draws_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    titles = [f"true: ring\npred: ring (0.{i:02d})" for i in range(10)]
    white = plot_montage(np.full((10, 3, 16, 16), 255, np.uint8), titles, tmp_path / "white.png", ncols=4)
    full = plot_montage(rng.integers(0, 256, (10, 3, 16, 16), dtype=np.uint8), titles, tmp_path / "rgb.png", ncols=4)
    size = _png(full)
    assert size == _png(white)
    assert size[0] == pytest.approx(4 * 1.7 * DPI, abs=2)
    assert _non_white(full) > 5 * _non_white(white)
    _only(tmp_path, "white.png", "rgb.png")


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_montage_float_and_odd_channels(tmp_path: Path, channels: int) -> None:
    images = np.random.default_rng(3).normal(size=(3, channels, 12, 12)).astype(np.float32) * 100
    images[0] = 7.0  # a constant image must not divide by zero
    out = plot_montage(images, ["a", "b", "c"], tmp_path / "m.png")
    _png(out)
    assert _non_white(out) > 0


def test_montage_caps_panels_and_checks_titles(tmp_path: Path) -> None:
    images = np.zeros((70, 1, 4, 4), np.uint8)
    out = plot_montage(images, [str(i) for i in range(70)], tmp_path / "cap.png", ncols=8)
    w, h = _png(out)
    assert w == pytest.approx(8 * 1.7 * DPI, abs=2)
    assert h == pytest.approx(8 * (1.7 + 0.12 + 0.08) * DPI, abs=2)  # 64 panels = 8 rows
    with pytest.raises(ValueError, match="titles"):
        plot_montage(images, ["x"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="shape"):
        plot_montage(np.zeros((2, 4, 4)), ["a", "b"], tmp_path / "bad.png")
    _only(tmp_path, "cap.png")


def test_failed_save_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    with pytest.raises(OSError):
        plot_confusion(np.eye(2, dtype=int), ["a", "b"], blocker / "cm.png")
    _only(tmp_path, "afile")
    assert plt.get_fignums() == []

    target = tmp_path / "keep.png"
    target.write_bytes(b"old")

    def boom(self: Figure, *args: object, **kwargs: object) -> None:
        Path(args[0]).write_bytes(b"half")  # a partial write, then failure
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_pred_vs_true(np.zeros((3, 1)), np.zeros((3, 1)), ["z"], target)
    assert target.read_bytes() == b"old"  # the previous file is untouched
    _only(tmp_path, "afile", "keep.png")
    assert plt.get_fignums() == []
