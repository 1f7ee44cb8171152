"""Self-supervised pretraining pieces: domain views, the memory bank size, config and input errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geocnn.config import GalaxyData, ViewsConfig, load_config
from geocnn.data.sources.galaxy_tables import read_unlabeled
from geocnn.data.ssl_views import random_view, two_views, view_plan
from geocnn.errors import GeocnnError
from geocnn.training.pretrain import bank_size
from tests.conftest import write_rgb


def test_galaxy_views_rotate_add_noise_and_never_jitter_bands() -> None:
    plan = view_plan("galaxy", ViewsConfig())
    assert plan.augment.rotate and plan.augment.flip and not plan.augment.rot90
    assert plan.augment.band_brightness == 0.0 and plan.noise == pytest.approx(0.1)
    earth = view_plan("earth", ViewsConfig(noise=0.0, zoom=0.0))
    assert earth.augment.rot90 and not earth.augment.rotate and earth.augment.band_brightness == pytest.approx(0.2)
    assert earth.noise == 0.0 and earth.augment.zoom == 0.0  # overrides win over the domain defaults


def test_two_views_differ_but_keep_shape_and_statistics() -> None:
    x = torch.randn(16, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    a, b = two_views(x, view_plan("galaxy", ViewsConfig()), g)
    assert a.shape == b.shape == x.shape
    assert (a - b).abs().mean() > 0.1  # independent draws
    # noise only (no geometry, no brightness): the view is the batch plus N(0, 0.5^2)
    only_noise = view_plan("galaxy", ViewsConfig(rotate=False, flip=False, zoom=0.0, translate=0.0, brightness=0.0,
                                                 noise=0.5))
    diff = random_view(x, only_noise, torch.Generator().manual_seed(2)) - x
    assert diff.std().item() == pytest.approx(0.5, rel=0.05) and abs(diff.mean().item()) < 0.02


def test_memory_bank_is_capped_at_half_the_images_and_at_least_a_batch() -> None:
    assert bank_size(4096, 384, 64) == 192
    assert bank_size(4096, 100, 64) == 64
    assert bank_size(128, 10_000, 64) == 128
    assert bank_size(0, 10_000, 64) == 0


def test_unknown_method_names_the_key() -> None:
    with pytest.raises(GeocnnError, match="pretrain.method"):
        load_config(overrides=["pretrain.method=dino"])
    with pytest.raises(GeocnnError, match="pretrain.memory_bank_size"):
        load_config(overrides=["pretrain.memory_bank_size=16", "pretrain.batch_size=64"])


def test_empty_folder_names_the_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GeocnnError, match=f"data.images={empty}: the folder holds no images"):
        read_unlabeled(GalaxyData(format="folders", images=str(empty)))
    with pytest.raises(GeocnnError, match="not a folder"):
        read_unlabeled(GalaxyData(format="folders", images=str(tmp_path / "missing")))


def test_a_plain_folder_and_a_catalog_without_targets_are_read_unlabeled(tmp_path: Path) -> None:
    for i in range(3):
        write_rgb(tmp_path / "imgs" / ("sub" if i else "") / f"g{i}.png", 16, seed=i)
    cat = read_unlabeled(GalaxyData(format="folders", images=str(tmp_path / "imgs")))
    assert sorted(cat.frame["id"]) == ["g0.png", "sub/g1.png", "sub/g2.png"] and cat.targets == []
    (tmp_path / "imgs" / "cat.csv").write_text("id,file\na,g0.png\nb,sub/g1.png\n")
    cat = read_unlabeled(GalaxyData(format="csv", catalog=str(tmp_path / "imgs" / "cat.csv")))
    assert list(cat.frame["id"]) == ["a", "b"] and cat.targets == []
    assert cat.frame["image"].map(lambda p: Path(p).exists()).all()
