"""The fast paths give the same results as the plain ones: strip reads for maps, batched rot90, loader settings."""

from __future__ import annotations

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

from geocnn.config import AugmentConfig
from geocnn.data.augment import augment_batch
from geocnn.data.datamodule import EpochShuffledBatches, resolve_workers
from geocnn.inference.sliding import BLOCK_PX, raster_reader
from geocnn.outputs.cog import predict_map


def band_mean(batch: np.ndarray) -> np.ndarray:
    return np.nanmean(batch, axis=(1, 2, 3))


def test_strip_reads_give_the_same_map_as_window_reads_and_reread_only_nodata_tiles(tmp_path):
    h, w = 600, 700  # 3 x 3 output tiles of 256 px; nodata in two of them, windows hanging past the edges
    data = np.random.default_rng(0).normal(100, 20, (3, h, w)).astype(np.float32)
    data[:, 10:50, 20:60] = np.nan  # tile (0, 0)
    data[2, 520:530, 600:640] = np.nan  # tile (2, 2), one band only
    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="float32", crs="EPSG:32633",
                       transform=from_origin(500_000, 4_000_000, 10, 10), nodata=np.nan) as dst:
        dst.write(data)
    calls: list[Window] = []
    with raster_reader(path) as (read, grid):
        assert getattr(read, "exact_strips", False)

        def by_window(window: Window, shape: tuple[int, int]) -> np.ndarray:  # no exact_strips: one read a window
            return read(window, shape)

        def recording(window: Window, shape: tuple[int, int]) -> np.ndarray:
            calls.append(window)
            return read(window, shape)

        recording.exact_strips = True
        for name, reader in (("windows", by_window), ("strips", recording)):
            predict_map(reader, grid, band_mean, tmp_path / f"{name}.tif", chip_px=48, stride_px=24,
                        batch_size=7, max_nodata_fraction=0.5)
    with rasterio.open(tmp_path / "windows.tif") as a, rasterio.open(tmp_path / "strips.tif") as b:
        plain, fast = a.read(1), b.read(1)
    np.testing.assert_array_equal(np.isnan(plain), np.isnan(fast))
    np.testing.assert_allclose(fast, plain, rtol=1e-6)
    assert np.isnan(fast[30, 40]) and np.isnan(fast[525, 620]) and np.isfinite(fast[300, 300])

    strips = [c for c in calls if c.height == 48]
    assert len(strips) == len(range(0, h - 48 + 24, 24))  # one read per row of windows
    assert all(c.col_off == 0 and c.width >= w for c in strips)
    tiles = [(int(c.row_off) // BLOCK_PX, int(c.col_off) // BLOCK_PX) for c in calls if c.height != 48]
    assert sorted(tiles) == [(0, 0), (2, 2)]  # the output mask is re-read only where the scene has nodata


def test_batched_rot90_turns_each_image_by_one_quarter_turn_and_uses_all_four():
    cfg = AugmentConfig(rotate=False, flip=False, rot90=True, translate=0.0, zoom=0.0, brightness=0.0,
                        band_brightness=0.0)
    x = torch.rand(64, 3, 9, 9)
    out = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    turns = []
    for img, got in zip(x, out):
        hits = [k for k in range(4) if torch.equal(torch.rot90(img, k, dims=(-2, -1)), got)]
        assert len(hits) == 1
        turns.append(hits[0])
    assert set(turns) == {0, 1, 2, 3}
    again = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # the same generator state, the same turns


def test_epoch_batches_depend_only_on_seed_and_epoch():
    def order(seed: int, epoch: int, drop_last: bool = False) -> list[list[int]]:
        sampler = EpochShuffledBatches(10, 4, seed, drop_last)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(1, 3) == order(1, 3)
    assert order(1, 3) != order(1, 4) and order(1, 3) != order(2, 3)
    assert sorted(i for b in order(1, 0) for i in b) == list(range(10)) and len(order(1, 0)) == 3
    assert [len(b) for b in order(1, 0, drop_last=True)] == [4, 4]


def test_auto_workers_are_none_on_cpu_and_a_few_on_cuda(monkeypatch):
    assert resolve_workers("auto", torch.device("cpu")) == 0
    assert resolve_workers(3, torch.device("cpu")) == 3
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert resolve_workers("auto", torch.device("cuda")) == 4
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert resolve_workers("auto", torch.device("cuda")) == 1
