"""The Lightning module directly: the task's loss, validation metrics through the forward loop, layer-decay
parameter groups, the learning-rate schedule, and the augmentation stream saved in and restored from checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geocnn.config import AugmentConfig, ModelConfig, OptimConfig
from geocnn.data.schema import KAGGLE_TREE
from geocnn.models.backbones import block_ids
from geocnn.models.losses import dirichlet_multinomial_nll
from geocnn.models.network import GeoNet, NetSpec
from geocnn.training.module import GeoTask
from geocnn.training.optim import build_optimizer, lr_factor

COUNTS = ["q_a", "q_b", "r_x", "r_y", "r_z"]


def module(task: str, targets: list[str], classes: list[str] | None = None, **model: object) -> GeoTask:
    spec = NetSpec("test_resnet", 3, task, targets, classes or [], mean=[0.0] * 3, std=[1.0] * 3,
                   target_mean=[5.0] if task == "regression" else [], target_std=[2.0] if task == "regression" else [])
    torch.manual_seed(0)
    return GeoTask(GeoNet(spec), ModelConfig(task=task, **model), OptimConfig(), AugmentConfig(), epochs=4,
                   steps_per_epoch=10)


def test_the_loss_is_the_tasks_loss_of_head_outputs() -> None:
    cls = module("classification", ["k"], ["a", "b", "c"])
    out, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    assert torch.allclose(cls.loss(out, y), F.cross_entropy(out, y))

    reg = module("regression", ["y"])
    out, y = torch.tensor([[0.5], [-1.0]]), torch.tensor([[6.0], [3.0]])
    assert torch.allclose(reg.loss(out, y), F.mse_loss(out, (y - 5.0) / 2.0))  # standardised target units
    huber = module("regression", ["y"], loss="huber")
    assert torch.allclose(huber.loss(out, y), F.huber_loss(out, (y - 5.0) / 2.0))

    frac = module("vote_fractions", list(KAGGLE_TREE.columns))
    out, y = torch.rand(2, 37), torch.rand(2, 37)
    assert torch.allclose(frac.loss(out, y), F.mse_loss(out, y))

    counts = module("vote_counts", COUNTS)
    alpha, y = torch.rand(3, 5) * 5 + 1, torch.randint(0, 9, (3, 5)).float()
    assert torch.allclose(counts.loss(alpha, y), dirichlet_multinomial_nll(y, alpha, counts.net.spec.decision_tree()))
    with pytest.raises(Exception, match="does not fit model.task"):
        module("classification", ["k"], ["a", "b"], loss="mse")


def test_validation_runs_the_forward_loop_and_logs_the_tasks_metric() -> None:
    cls = module("classification", ["k"], ["a", "b", "c"]).eval()
    logged: dict[str, float] = {}
    cls.log = lambda name, value, **kw: logged.__setitem__(name, float(value))  # type: ignore[method-assign]
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        cls.validation_step((x, y), 0)
        cls.on_validation_epoch_end()
        want = (cls.net(x).argmax(1) == y).float().mean()
    assert logged["val/accuracy"] == pytest.approx(float(want))
    assert logged["val/loss"] == pytest.approx(float(F.cross_entropy(cls.net(x), y)), rel=1e-5)


def test_layer_decay_gives_each_block_its_learning_rate_and_no_decay_to_1d_parameters() -> None:
    task = module("classification", ["k"], ["a", "b"], transfer="full", layer_decay=0.5)
    opt = task.configure_optimizers()["optimizer"]
    ids = block_ids(task.net.encoder)
    top = max(ids.values())
    base = OptimConfig().lr
    for group in opt.param_groups:
        if group["name"] == "head":
            assert group["initial_lr"] == pytest.approx(base)
            continue
        block = int(group["name"].removeprefix("block"))
        assert group["initial_lr"] == pytest.approx(base * 0.5 ** (top + 1 - block))
        assert group["lr"] == pytest.approx(group["initial_lr"] * lr_factor(0, 10, 4, OptimConfig()))  # warm-up
        assert all(p.ndim > 1 for p in group["params"]) == (group["weight_decay"] > 0)
    n_encoder = sum(len(g["params"]) for g in opt.param_groups if g["name"] != "head")
    assert n_encoder == len(list(task.net.encoder.parameters()))
    scratch = module("classification", ["k"], ["a", "b"], transfer="from_scratch")
    lrs = {g["initial_lr"] for g in scratch.configure_optimizers()["optimizer"].param_groups}
    assert lrs == {base}  # from scratch: no decay


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_each_configured_optimiser_is_built_with_its_settings(name: str) -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    cfg = OptimConfig(name=name, lr=0.01, weight_decay=0.1, momentum=0.8, nesterov=True)
    opt = build_optimizer([{"params": params}], cfg)
    kind = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "adagrad": "Adagrad"}[name]
    assert type(opt).__name__ == kind and opt.defaults["lr"] == 0.01 and opt.defaults["weight_decay"] == 0.1
    if name == "sgd":
        assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.8


def test_schedules_warm_up_then_decay() -> None:
    cosine = OptimConfig(schedule="cosine", warmup_epochs=1)
    assert lr_factor(0, 10, 5, cosine) == pytest.approx(0.1)  # linear warm-up over the first epoch
    assert lr_factor(9, 10, 5, cosine) == pytest.approx(1.0)
    assert lr_factor(10, 10, 5, cosine) == pytest.approx(1.0)
    assert lr_factor(30, 10, 5, cosine) == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 40)))
    assert lr_factor(50, 10, 5, cosine) == pytest.approx(0.0, abs=1e-12)
    step = OptimConfig(schedule="step", warmup_epochs=0, step_size=2, gamma=0.1)
    assert [lr_factor(s, 10, 6, step) for s in (0, 19, 20, 40)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    assert lr_factor(33, 10, 6, OptimConfig(schedule="constant", warmup_epochs=0)) == 1.0


def test_the_augmentation_stream_is_saved_in_checkpoints_and_restored_on_resume() -> None:
    first = module("classification", ["k"], ["a", "b"])
    gen = first._augment_generator(torch.device("cpu"))
    torch.rand(5, generator=gen)  # the stream has advanced (training steps drew from it)
    checkpoint: dict = {}
    first.on_save_checkpoint(checkpoint)
    expected = torch.rand(5, generator=gen)  # what an uninterrupted run draws next

    resumed = module("classification", ["k"], ["a", "b"])
    resumed.on_load_checkpoint(checkpoint)
    got = torch.rand(5, generator=resumed._augment_generator(torch.device("cpu")))
    assert torch.equal(got, expected)
    fresh = torch.rand(5, generator=module("classification", ["k"], ["a", "b"])._augment_generator(torch.device("cpu")))
    assert not torch.equal(fresh, expected)  # without the checkpoint the stream would start over


def test_dropout_draws_depend_on_the_optimiser_step_only() -> None:
    task = module("classification", ["k"], ["a", "b"], dropout=0.5)

    class Trainer:
        global_step = 7
        global_rank = 0

    task._trainer = Trainer()  # type: ignore[assignment]
    task.on_train_batch_start(None, 0)
    a = torch.rand(3)
    torch.manual_seed(123)  # whatever ran before
    task.on_train_batch_start(None, 0)
    b = torch.rand(3)
    assert torch.equal(a, b)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
