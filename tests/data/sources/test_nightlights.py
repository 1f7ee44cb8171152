"""Night-light classes: quantiles and the Gaussian mixture of Jean et al., on generated and real night lights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geocnn.data.sources.nightlights import nightlight_classes
from geocnn.errors import GeocnnError


def test_quantiles_equal_counts() -> None:
    values = np.arange(1.0, 10.0)
    classes, thresholds = nightlight_classes(values, "quantiles", 3)
    assert classes.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and classes.dtype == np.int64
    assert thresholds == pytest.approx([11 / 3, 19 / 3])
    classes, _ = nightlight_classes(values.reshape(3, 3)[::-1], "quantiles", 3)
    assert classes.shape == (3, 3) and classes[0].tolist() == [2, 2, 2]


def test_gmm_bimodal_sample() -> None:
    rng = np.random.default_rng(0)
    dark, bright = rng.normal(0.0, 1.0, 400), rng.normal(10.0, 1.0, 200)
    values = rng.permutation(np.r_[dark, bright])
    classes, thresholds = nightlight_classes(values, "gmm", 2, seed=1)
    assert len(thresholds) == 1 and 4.0 < thresholds[0] < 6.5  # the weighted densities cross near the middle
    np.testing.assert_array_equal(classes, (values > thresholds[0]).astype(int))
    assert np.bincount(classes).tolist() == [400, 200]  # the two modes are 10 sd apart: no value is misplaced


def test_gmm_three_classes_ordered_by_mean() -> None:
    rng = np.random.default_rng(2)
    values = np.r_[rng.normal(50, 3, 100), rng.normal(0, 0.5, 300), rng.normal(20, 2, 150)]
    classes, thresholds = nightlight_classes(values, "gmm", 3)
    assert thresholds[0] < thresholds[1]
    assert np.bincount(classes).tolist() == [300, 150, 100]
    means = [values[classes == k].mean() for k in range(3)]
    assert means == sorted(means)  # 0 = darkest


def test_errors() -> None:
    with pytest.raises(GeocnnError, match="2 of 5 values are NaN or infinite"):
        nightlight_classes(np.array([1.0, np.nan, 2.0, np.inf, 3.0]), "gmm")
    with pytest.raises(GeocnnError, match="need at least 3 distinct values"):
        nightlight_classes(np.array([0.0, 0.0, 1.0]), "quantiles")
    with pytest.raises(GeocnnError, match=r"class\(es\) \[1\] of 3 are empty.*gmm"):
        nightlight_classes(np.r_[np.zeros(80), np.arange(1.0, 21.0)], "quantiles")
    with pytest.raises(GeocnnError, match="not one of"):
        nightlight_classes(np.arange(5.0), "kmeans")  # type: ignore[arg-type]


@pytest.mark.realdata
def test_black_marble_at_dhs_clusters(shared_data: Path) -> None:
    from geocnn.data.sources.raster import label_statistic, open_scene

    clusters = pd.read_csv(shared_data / "poverty/dhs_clusters.csv").sample(600, random_state=0)
    with open_scene(shared_data / "satellite/nightlights/blackmarble_2016_3km_gray.tif") as scene:
        lights = np.array([label_statistic(scene, lon, lat, "mean", size_px=3)
                           for lon, lat in zip(clusters["lon"], clusters["lat"])])
    classes, thresholds = nightlight_classes(lights, "gmm", 3)
    counts = np.bincount(classes, minlength=3)
    assert (counts > 0).all() and counts[0] == counts.max()  # most DHS clusters are dark
    means = [lights[classes == k].mean() for k in range(3)]
    assert means == sorted(means)
    # brighter classes are wealthier (Jean et al.'s premise)
    wealth = [clusters["wealthpooled"].to_numpy()[classes == k].mean() for k in range(3)]
    assert wealth == sorted(wealth)
