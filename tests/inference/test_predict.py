"""The one forward loop: views averaged in output space, features, a stage-2 head, rows in order, NaN nodata."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geocnn.data.augment import tta_views
from geocnn.inference.predict import Forward, forward_views
from geocnn.models.network import GeoNet, NetSpec


@pytest.fixture(scope="module")
def net() -> GeoNet:
    torch.manual_seed(0)
    return GeoNet(NetSpec("test_resnet", 3, "regression", ["y"], mean=[0.5] * 3, std=[0.25] * 3,
                          target_mean=[2.0], target_std=[3.0])).eval()


def chips(n: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 16, 16)).astype(np.float32)


def test_views_are_averaged_in_prediction_space(net: GeoNet) -> None:
    x = torch.from_numpy(chips())
    with torch.no_grad():
        manual = torch.stack([net.to_prediction(net.forward_normalised(v))
                              for v in tta_views(net.normalise(x), 4)]).mean(0)
    np.testing.assert_allclose(Forward(net, views=4, device="cpu")(x.numpy()), manual.numpy(), rtol=1e-5, atol=1e-6)
    one = Forward(net, views=1, device="cpu")(x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(one, net.to_prediction(net(x)).numpy(), rtol=1e-6, atol=1e-6)


def test_features_and_a_stage2_head_on_them(net: GeoNet) -> None:
    x = chips()
    feats = Forward(net, views=2, device="cpu", output="features")(x)
    assert feats.shape == (7, net.encoder.num_features)
    with torch.no_grad():
        want = torch.stack([net.encoder(v) for v in tta_views(net.normalise(torch.from_numpy(x)), 2)]).mean(0)
    np.testing.assert_allclose(feats, want.numpy(), rtol=1e-5, atol=1e-6)

    class Head:
        def predict(self, f: np.ndarray) -> np.ndarray:
            return f.sum(1)

    staged = Forward(net, views=2, device="cpu", head=Head())
    assert staged.width == 1
    np.testing.assert_allclose(staged(x)[:, 0], feats.sum(1), rtol=1e-5)
    np.testing.assert_allclose(staged.batch(x)[:, 0], feats.sum(1), rtol=1e-5)  # the per-batch path maps use


def test_rows_come_back_in_the_order_asked_whatever_the_batching(net: GeoNet) -> None:
    x = chips(9)
    rows = np.array([5, 1, 8, 3])
    all_rows = Forward(net, device="cpu")(x, batch_size=4)
    np.testing.assert_allclose(Forward(net, device="cpu")(x, rows, batch_size=3), all_rows[rows], rtol=1e-5,
                               atol=1e-6)
    assert Forward(net, device="cpu")(x, np.array([], int)).shape == (0, 1)


def test_nodata_becomes_the_band_mean(net: GeoNet) -> None:
    x = chips(2)
    holes = x.copy()
    holes[:, 1, :4, :4] = np.nan
    filled = x.copy()
    filled[:, 1, :4, :4] = 0.5  # the band mean of the train split: normalises to 0
    forward = Forward(net, device="cpu")
    np.testing.assert_allclose(forward(holes), forward(filled), rtol=1e-6)
    assert np.isfinite(forward(holes)).all()


def test_raw_outputs_are_the_head_outputs(net: GeoNet) -> None:
    x = torch.from_numpy(chips(3))
    with torch.no_grad():
        raw = forward_views(net, x, 1, "raw")
        assert torch.allclose(raw, net(x)) and torch.allclose(net.to_prediction(raw), raw * 3.0 + 2.0)
