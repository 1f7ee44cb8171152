"""Tests for geocnn.evaluation.plots: valid PNGs of the expected size, atomic writes, figures closed."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from geocnn.evaluation.calibration import expected_calibration_error, reliability, temper
from geocnn.evaluation.plots import DPI, plot_confusion, plot_montage, plot_pred_vs_true, plot_reliability


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


COUNTRIES = ["angola", "benin", "burkina_faso", "cameroon", "cote_d_ivoire", "democratic_republic_of_congo",
             "ethiopia", "ghana", "guinea", "kenya", "lesotho", "malawi", "mali", "mozambique", "nigeria", "rwanda",
             "senegal", "sierra_leone", "tanzania", "togo", "uganda", "zambia", "zimbabwe"]
"""The 23 countries of the DHS clusters (Yeh et al. 2020), as in dhs_clusters.csv."""


def _saved_layout(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record, for each saved figure, its size, the tight box of everything drawn and each legend's box (inches)."""
    records: list[dict] = []
    save = Figure.savefig

    def spy(self: Figure, *args: object, **kwargs: object) -> None:
        save(self, *args, **kwargs)
        renderer = self.canvas.get_renderer()
        scale = self.dpi
        records.append({"size": tuple(self.get_size_inches()), "bbox_inches": kwargs.get("bbox_inches"),
                        "tight": self.get_tightbbox(renderer).extents,
                        "legends": [leg.get_window_extent(renderer).extents / scale for leg in self.legends],
                        "labels": [[t.get_text() for t in leg.get_texts()] for leg in self.legends]})

    monkeypatch.setattr(Figure, "savefig", spy)
    return records


@pytest.mark.parametrize("names", [COUNTRIES, [f"a very long survey name number {i}" for i in range(4)]],
                         ids=["23_countries", "4_long_names"])
def test_pred_vs_true_legend_of_many_groups_is_never_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             names: list[str]) -> None:
    records = _saved_layout(monkeypatch)
    rng = np.random.default_rng(4)
    groups = np.array(names * 20)
    y = rng.normal(size=(len(groups), 1))
    out = plot_pred_vs_true(y, y + rng.normal(scale=0.3, size=y.shape), ["wealthpooled"], tmp_path / "pvt.png",
                            groups=groups)
    (rec,) = records
    assert rec["labels"] == [sorted(names)]  # every group in the one legend
    x0, y0, x1, y1 = rec["legends"][0]
    w, h = rec["size"]
    # the legend lies inside the figure, and the tight save keeps the whole of what was drawn
    assert 0 <= x0 < x1 <= w + 1e-6 and 0 <= y0 < y1 <= h + 1e-6, (rec["legends"][0], rec["size"])
    assert rec["bbox_inches"] == "tight"
    tx0, ty0, tx1, ty1 = rec["tight"]
    assert tx0 <= x0 and ty0 <= y0 and x1 <= tx1 and y1 <= ty1
    width, height = _png(out)  # the PNG is that tight box plus its 0.1 in pad
    assert abs(width - (tx1 - tx0 + 0.2) * DPI) <= 3 and abs(height - (ty1 - ty0 + 0.2) * DPI) <= 3
    assert plt.get_fignums() == []


def test_reliability_diagram_draws_the_bins_before_and_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(600, 4)) * 2
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = (true.cumsum(1) > rng.random((600, 1))).argmax(1)
    before, after = temper(true, 0.4), true  # over-confident, and the calibrated truth
    drawn: list[dict] = []
    save = Figure.savefig

    def spy(self: Figure, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        top, bottom = self.axes
        drawn.append({"lines": {ln.get_label(): ln.get_xydata() for ln in top.get_lines()},
                      "bars": [[p.get_height() for p in c] for c in bottom.containers]})
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    out = plot_reliability(before, after, labels, tmp_path / "rel.png", bins=10, temperature=2.5)
    _assert_size(_png(out), (5.2, 5.8))
    assert _non_white(out) > 20000  # curves, bars and text, not a blank canvas
    (rec,) = drawn
    ece_before, ece_after = expected_calibration_error(before, labels), expected_calibration_error(after, labels)
    assert ece_before > 0.1 > 0.05 > ece_after
    names = [f"uncalibrated: ECE {ece_before:.3f}", f"temperature scaled (T=2.50): ECE {ece_after:.3f}"]
    assert list(rec["lines"]) == ["perfect calibration", *names]
    for name, proba, bars in zip(names, (before, after), rec["bars"]):
        conf, acc, count = reliability(proba, labels, 10)
        ok = count > 0
        np.testing.assert_allclose(rec["lines"][name], np.column_stack([conf[ok], acc[ok]]))
        assert bars == list(count) and sum(bars) == 600
    # over-confident: every populated bin above 0.5 confidence is less accurate than its confidence
    conf, acc, count = reliability(before, labels, 10)
    high = (count > 20) & (conf > 0.5)
    assert high.sum() >= 3 and (acc[high] < conf[high]).all()

    only = plot_reliability(before, None, labels, tmp_path / "before.png")
    assert list(drawn[-1]["lines"]) == ["perfect calibration", names[0]] and _non_white(only) > 10000
    with pytest.raises(ValueError, match="labels"):
        plot_reliability(before, after, labels[:5], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="proba_after"):
        plot_reliability(before, after[:, :2], labels, tmp_path / "bad.png")
    _only(tmp_path, "rel.png", "before.png")
    assert plt.get_fignums() == []
