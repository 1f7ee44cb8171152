"""Models: decision-tree head, Dirichlet-multinomial loss, encoders with local weights, transfer modes, GeoNet."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import betabinom

from geocnn.data.schema import KAGGLE_TREE, DecisionTree, Question, questions_from_columns
from geocnn.errors import GeocnnError
from geocnn.models.backbones import apply_transfer, block_ids, create_encoder, encoder_param_groups
from geocnn.models.heads import DecisionTreeHead, DirichletHead, LinearHead
from geocnn.models.losses import dirichlet_multinomial_nll, expected_fractions
from geocnn.models.network import GeoNet, NetSpec

# The Kaggle tree written out independently of geocnn (../shared/data/README.md).
KAGGLE_PARENTS = {"Class2": "Class1.2", "Class3": "Class2.2", "Class4": "Class2.2", "Class5": "Class2.2",
                  "Class7": "Class1.1", "Class8": "Class6.1", "Class9": "Class2.1", "Class10": "Class4.1",
                  "Class11": "Class4.1"}
KAGGLE_ROOTS = {"Class1", "Class6"}


pytestmark = pytest.mark.usefixtures("one_thread")


def tree_violations(values: np.ndarray, tree: DecisionTree, tol: float = 1e-3) -> list[str]:
    """Every (row, question) whose answers do not sum to 1 (root) or to the parent answer's value (child)."""
    values = np.asarray(values, dtype=np.float64)
    cols = tree.columns
    out = []
    for q in tree.questions:
        idx = [cols.index(a) for a in q.answers]
        sums = values[:, idx].sum(axis=1)
        expected = np.ones(len(values)) if q.parent is None else values[:, cols.index(q.parent)]
        for row in np.flatnonzero(np.abs(sums - expected) > tol):
            out.append(f"row {row} {q.name}: sum {sums[row]:.6f} != {expected[row]:.6f}")
    return out


# ----------------------------------------------------------------------------------------------- schema / head


def test_kaggle_tree_structure_matches_readme() -> None:
    assert len(KAGGLE_TREE.columns) == 37
    sizes = {q.name: len(q.answers) for q in KAGGLE_TREE.questions}
    assert sizes == {"Class1": 3, "Class2": 2, "Class3": 2, "Class4": 2, "Class5": 4, "Class6": 2, "Class7": 3,
                     "Class8": 7, "Class9": 3, "Class10": 3, "Class11": 6}
    parents = {q.name: q.parent for q in KAGGLE_TREE.questions if q.parent}
    assert parents == KAGGLE_PARENTS
    assert {q.name for q in KAGGLE_TREE.questions if q.parent is None} == KAGGLE_ROOTS
    # slices: contiguous, and the parent index points at the parent column
    cols = KAGGLE_TREE.columns
    for q, (start, stop, parent) in zip(KAGGLE_TREE.questions, KAGGLE_TREE.slices()):
        assert cols[start:stop] == list(q.answers)
        assert (parent is None) == (q.parent is None)
        if parent is not None:
            assert cols[parent] == q.parent


@pytest.mark.parametrize("kind", ["normal", "negative", "large", "mixed_zero"])
def test_decision_tree_head_obeys_kaggle_tree(kind: str) -> None:
    torch.manual_seed(0)
    raw = torch.randn(64, 37)
    if kind == "negative":
        raw = -raw.abs() - 0.1
    elif kind == "large":
        raw = raw * 100
    elif kind == "mixed_zero":
        raw[::2] = -1.0  # half the rows all-negative, half random
    head = DecisionTreeHead(8, KAGGLE_TREE)
    out = head.constrain(raw).detach().numpy()
    assert out.shape == (64, 37)
    assert np.isfinite(out).all()
    assert (out >= 0).all() and (out <= 1 + 1e-6).all()
    assert tree_violations(out, KAGGLE_TREE, tol=1e-5) == []
    for root in KAGGLE_ROOTS:
        q = next(q for q in KAGGLE_TREE.questions if q.name == root)
        idx = [KAGGLE_TREE.columns.index(a) for a in q.answers]
        np.testing.assert_allclose(out[:, idx].sum(1), 1.0, atol=1e-5)


def test_decision_tree_head_all_negative_is_uniform() -> None:
    head = DecisionTreeHead(4, KAGGLE_TREE)
    out = head.constrain(-torch.ones(2, 37)).detach().numpy()
    cols = KAGGLE_TREE.columns
    # Class1: 1/3 each; Class2 (<- Class1.2 = 1/3): 1/6 each; Class3 (<- Class2.2 = 1/6): 1/12 each
    np.testing.assert_allclose(out[:, cols.index("Class1.1")], 1 / 3, atol=1e-6)
    np.testing.assert_allclose(out[:, cols.index("Class2.2")], 1 / 6, atol=1e-6)
    np.testing.assert_allclose(out[:, cols.index("Class3.1")], 1 / 12, atol=1e-6)
    # Class8 (<- Class6.1 = 1/2): 1/14 each; Class11 (<- Class4.1 = 1/12): 1/72 each
    np.testing.assert_allclose(out[:, cols.index("Class8.7")], 1 / 14, atol=1e-6)
    np.testing.assert_allclose(out[:, cols.index("Class11.6")], 1 / 72, atol=1e-6)


def test_constrain_hand_computed_small_tree() -> None:
    # A: root with 2 answers; B <- A.1 with 3 answers; C <- B.3 with 2 answers.
    tree = DecisionTree("toy", (Question("A", ("A.1", "A.2")),
                                Question("B", ("B.1", "B.2", "B.3"), "A.1"),
                                Question("C", ("C.1", "C.2"), "B.3")))
    raw = torch.tensor([[3.0, 1.0, 2.0, -5.0, 2.0, 1.0, 3.0],
                        [-1.0, 4.0, 1.0, 1.0, 2.0, -2.0, -2.0]])
    out = DecisionTreeHead(2, tree).constrain(raw).numpy()
    # row 0: A = [3, 1] / 4 = [0.75, 0.25]; B = [2, 0, 2] / 4 * 0.75 = [0.375, 0, 0.375];
    #        C = [1, 3] / 4 * 0.375 = [0.09375, 0.28125]
    # row 1: A = [0, 4] / 4 = [0, 1]; B = [1, 1, 2] / 4 * 0 = 0; C = uniform (all <= 0) * 0 = 0
    expected = np.array([[0.75, 0.25, 0.375, 0.0, 0.375, 0.09375, 0.28125],
                         [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert tree_violations(out, tree, tol=1e-5) == []


def test_decision_tree_head_forward_and_gradients() -> None:
    torch.manual_seed(1)
    head = DecisionTreeHead(16, KAGGLE_TREE)
    feats = torch.randn(5, 16, requires_grad=True)
    out = head(feats)
    assert out.shape == (5, 37)
    assert tree_violations(out.detach().numpy(), KAGGLE_TREE, tol=1e-5) == []
    out[:, 0].sum().backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()


def test_real_kaggle_labels_obey_tree(shared_data: Path) -> None:
    frame = pd.read_csv(shared_data / "galaxy" / "kaggle_sample" / "training_solutions_rev1.csv")
    assert len(frame) == 3
    values = frame[KAGGLE_TREE.columns].to_numpy(dtype=float)
    assert tree_violations(values, KAGGLE_TREE, tol=1e-3) == []
    # README quirk: Q6 sums to 1 even where Class1.3 (star/artifact) > 0
    assert (frame["Class1.3"] > 0).any()
    np.testing.assert_allclose(frame[["Class6.1", "Class6.2"]].sum(1), 1.0, atol=1e-3)
    # and the checker does catch a broken row
    broken = values.copy()
    broken[0, KAGGLE_TREE.columns.index("Class10.1")] += 0.1
    assert any("Class10" in v for v in tree_violations(broken, KAGGLE_TREE))


# ----------------------------------------------------------------------------------------------- losses

COLS = ["smooth_yes", "smooth_no", "bar_strong", "bar_weak", "bar_none"]
TOY = questions_from_columns(COLS)


def test_questions_from_columns_groups_by_prefix() -> None:
    assert [q.name for q in TOY.questions] == ["smooth", "bar"]
    assert TOY.slices() == [(0, 2, None), (2, 5, None)]


def _dm_logpmf_3(c: list[float], a: list[float]) -> float:
    n, s = sum(c), sum(a)
    out = math.lgamma(n + 1) + math.lgamma(s) - math.lgamma(n + s)
    for ck, ak in zip(c, a):
        out += math.lgamma(ck + ak) - math.lgamma(ak) - math.lgamma(ck + 1)
    return out


def test_dirichlet_multinomial_matches_betabinom_and_lgamma() -> None:
    counts = torch.tensor([[7.0, 3.0, 2.0, 5.0, 1.0],
                           [0.0, 12.0, 0.0, 0.0, 9.0],
                           [20.0, 1.0, 4.0, 4.0, 4.0]], dtype=torch.float64)
    alpha = torch.tensor([[2.0, 5.0, 1.5, 3.0, 7.0],
                          [1.0, 1.0, 10.0, 20.0, 30.0],
                          [50.0, 2.5, 1.1, 99.0, 4.0]], dtype=torch.float64)
    loss = dirichlet_multinomial_nll(counts, alpha, TOY)
    expected = []
    for c, a in zip(counts.tolist(), alpha.tolist()):
        # 2 answers: Dirichlet-multinomial == beta-binomial
        lp = betabinom.logpmf(c[0], c[0] + c[1], a[0], a[1])
        lp += _dm_logpmf_3(c[2:], a[2:])
        expected.append(-lp)
    assert loss.item() == pytest.approx(float(np.mean(expected)), rel=1e-9)


def test_dirichlet_multinomial_probabilities_sum_to_one() -> None:
    # the pmf over all outcomes with N = 4 votes on a 3-answer question sums to 1
    tree = questions_from_columns(["q_a", "q_b", "q_c"])
    alpha = torch.tensor([[1.3, 2.0, 0.7]], dtype=torch.float64)
    total = 0.0
    for i in range(5):
        for j in range(5 - i):
            c = torch.tensor([[i, j, 4 - i - j]], dtype=torch.float64)
            total += math.exp(-dirichlet_multinomial_nll(c, alpha, tree).item())
    assert total == pytest.approx(1.0, abs=1e-9)


def test_unanswered_question_contributes_zero() -> None:
    alpha = torch.tensor([[3.0, 4.0, 2.0, 80.0, 1.5]], dtype=torch.float64)
    answered = torch.tensor([[5.0, 2.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    first_only = -betabinom.logpmf(5, 7, 3.0, 4.0)
    assert dirichlet_multinomial_nll(answered, alpha, TOY).item() == pytest.approx(first_only, rel=1e-9)
    other_alpha = alpha.clone()
    other_alpha[0, 2:] = torch.tensor([1.0, 1.0, 99.0])
    assert dirichlet_multinomial_nll(answered, other_alpha, TOY).item() == pytest.approx(first_only, rel=1e-9)
    assert dirichlet_multinomial_nll(torch.zeros(1, 5), alpha, TOY).item() == pytest.approx(0.0, abs=1e-9)


def test_expected_fractions_sum_to_one_per_question() -> None:
    alpha = torch.rand(6, 5) * 99 + 1
    frac = expected_fractions(alpha, TOY)
    assert frac.shape == (6, 5)
    torch.testing.assert_close(frac[:, :2].sum(1), torch.ones(6))
    torch.testing.assert_close(frac[:, 2:].sum(1), torch.ones(6))
    torch.testing.assert_close(frac[:, 0], alpha[:, 0] / alpha[:, :2].sum(1))


def test_minimising_dm_loss_moves_alpha_toward_observed_fractions() -> None:
    counts = torch.tensor([[30.0, 10.0, 6.0, 12.0, 42.0]] * 4)
    target = torch.tensor([0.75, 0.25, 0.1, 0.2, 0.7])
    theta = torch.zeros(1, 5, requires_grad=True)  # alpha = 1 + softplus(theta): start uniform
    opt = torch.optim.Adam([theta], lr=0.05)

    def alpha() -> torch.Tensor:
        return (1 + torch.nn.functional.softplus(theta)).expand(4, 5)

    start_err = (expected_fractions(alpha(), TOY)[0] - target).abs().max().item()
    start_loss = dirichlet_multinomial_nll(counts, alpha(), TOY).item()
    for _ in range(400):
        opt.zero_grad()
        loss = dirichlet_multinomial_nll(counts, alpha(), TOY)
        loss.backward()
        opt.step()
    end = expected_fractions(alpha(), TOY)[0].detach()
    assert loss.item() < start_loss
    assert (end - target).abs().max().item() < 0.05 < start_err
    torch.testing.assert_close(end, target, atol=0.05, rtol=0)


# ----------------------------------------------------------------------------------------------- backbones


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    """One encoder for the transfer tests: every apply_transfer mode sets requires_grad on every parameter."""
    torch.manual_seed(0)
    return create_encoder("resnet18", 3)


def _filled_state(encoder: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in encoder.state_dict().items():
        if v.is_floating_point():
            out[k] = torch.randn(v.shape, generator=g, dtype=v.dtype)
        else:
            out[k] = torch.randint(0, 1000, v.shape, generator=g, dtype=v.dtype)
    return out


@pytest.fixture(scope="module")
def resnet_state() -> dict[str, torch.Tensor]:
    return _filled_state(create_encoder("resnet18", 3), seed=123)


@pytest.fixture(scope="module")
def weight_files(resnet_state: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same known weights as .safetensors and as a plain .pth state dict (written once per module)."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("weights")
    files = {"safetensors": root / "w.safetensors", "pth": root / "w.pth"}
    save_file(resnet_state, str(files["safetensors"]))
    torch.save(resnet_state, files["pth"])
    return files


def _assert_state_equal(encoder: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = encoder.state_dict()
    assert set(own) == set(state)
    for k, v in state.items():
        assert torch.equal(own[k], v), k


def test_local_safetensors_weights_load(weight_files: dict[str, Path], resnet_state: dict[str, torch.Tensor],
                                       resnet: torch.nn.Module) -> None:
    enc = create_encoder("resnet18", 3, weights=str(weight_files["safetensors"]))
    _assert_state_equal(enc, resnet_state)
    # a random encoder is really different (the check above is not vacuous)
    assert not torch.equal(resnet.state_dict()["conv1.weight"], resnet_state["conv1.weight"])


def test_local_pth_weights_load(weight_files: dict[str, Path], resnet_state: dict[str, torch.Tensor]) -> None:
    _assert_state_equal(create_encoder("resnet18", 3, weights=str(weight_files["pth"])), resnet_state)


def test_local_pth_wrapped_with_module_prefix_loads(tmp_path: Path, resnet_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "ckpt.pth"
    wrapped = {"module." + k: v for k, v in resnet_state.items()}
    # a classifier from the original model is dropped (the encoder has num_classes=0)
    wrapped["module.fc.weight"] = torch.randn(10, 512)
    wrapped["module.fc.bias"] = torch.randn(10)
    torch.save({"state_dict": wrapped, "epoch": 3}, path)
    _assert_state_equal(create_encoder("resnet18", 3, weights=str(path)), resnet_state)


def test_three_band_weights_adapted_to_four_bands(weight_files: dict[str, Path],
                                                  resnet_state: dict[str, torch.Tensor]) -> None:
    enc = create_encoder("resnet18", 4, weights=str(weight_files["safetensors"]))
    own = enc.state_dict()
    w3 = resnet_state["conv1.weight"]
    assert own["conv1.weight"].shape == (64, 4, 7, 7)
    # timm's adaptation: repeat the bands cyclically, scale by 3/4 so activations keep their size
    expected = torch.cat([w3, w3[:, :1]], dim=1) * (3 / 4)
    torch.testing.assert_close(own["conv1.weight"], expected)
    for k, v in resnet_state.items():
        if k != "conv1.weight":
            assert torch.equal(own[k], v), k


def test_single_band_adaptation_sums_bands(weight_files: dict[str, Path],
                                           resnet_state: dict[str, torch.Tensor]) -> None:
    enc = create_encoder("resnet18", 1, weights=str(weight_files["pth"]))
    torch.testing.assert_close(enc.state_dict()["conv1.weight"], resnet_state["conv1.weight"].sum(1, keepdim=True))


class _Payload:
    """A custom class: its pickle needs code execution on load."""

    def __init__(self) -> None:
        self.x = 1


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_custom_class_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "custom.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": _Payload()}, path)
    with pytest.raises(GeocnnError, match="weights_only"):
        create_encoder("resnet18", 3, weights=str(path))


def test_pickle_with_os_system_reduce_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"w": _Evil(marker)}, path)
    with pytest.raises(GeocnnError, match="weights_only"):
        create_encoder("resnet18", 3, weights=str(path))
    assert not marker.exists()


def test_state_dict_of_other_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "convnext.pth"
    torch.save(_filled_state(create_encoder("convnext_atto", 3)), path)
    with pytest.raises(GeocnnError) as exc:
        create_encoder("resnet18", 3, weights=str(path))
    msg = str(exc.value)
    assert "match" in msg and "model.backbone" in msg
    assert str(path) in msg


def test_non_state_dict_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(GeocnnError, match="state dict"):
        create_encoder("resnet18", 3, weights=str(path))


def test_missing_weights_file_errors(tmp_path: Path) -> None:
    with pytest.raises(GeocnnError, match="does not exist"):
        create_encoder("resnet18", 3, weights=str(tmp_path / "missing.safetensors"))


def test_corrupt_safetensors_file_gives_geocnn_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"garbage")
    with pytest.raises(GeocnnError, match="broken.safetensors"):
        create_encoder("resnet18", 3, weights=str(path))


def test_corrupt_pth_file_gives_geocnn_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(b"garbage")
    with pytest.raises(GeocnnError, match="broken.pth"):
        create_encoder("resnet18", 3, weights=str(path))


def test_timm_name_with_pretrained_tag_is_accepted() -> None:
    enc = create_encoder("resnet18.a1_in1k", 3)
    assert enc.num_features == 512


def test_unknown_backbone_errors() -> None:
    with pytest.raises(GeocnnError, match="resnet_nonexistent_42"):
        create_encoder("resnet_nonexistent_42", 3)


# ----------------------------------------------------------------------------------------------- transfer modes


def _trainable_prefixes(encoder: torch.nn.Module) -> set[str]:
    return {n.split(".")[0] for n, p in encoder.named_parameters() if p.requires_grad}


def test_resnet_block_ids(resnet: torch.nn.Module) -> None:
    ids = block_ids(resnet)
    for name, i in ids.items():
        top = name.split(".")[0]
        assert i == ({"conv1": 0, "bn1": 0} | {f"layer{k}": k for k in range(1, 5)})[top], name


def test_linear_probe_freezes_encoder(resnet: torch.nn.Module) -> None:
    apply_transfer(resnet, "linear_probe", 2)
    assert not any(p.requires_grad for p in resnet.parameters())
    assert encoder_param_groups(resnet, 1e-3, 1e-4, 0.5) == []


@pytest.mark.parametrize(("n_blocks", "expected"), [(1, {"layer4"}), (2, {"layer3", "layer4"}),
                                                    (4, {"layer1", "layer2", "layer3", "layer4"}),
                                                    (5, {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"})])
def test_partial_unfreezes_last_blocks(resnet: torch.nn.Module, n_blocks: int, expected: set[str]) -> None:
    apply_transfer(resnet, "partial", n_blocks)
    assert _trainable_prefixes(resnet) == expected
    for name, p in resnet.named_parameters():
        assert p.requires_grad == (name.split(".")[0] in expected), name


@pytest.mark.parametrize("mode", ["full", "from_scratch"])
def test_full_trains_everything_even_after_freezing(resnet: torch.nn.Module, mode: str) -> None:
    apply_transfer(resnet, "linear_probe", 0)
    apply_transfer(resnet, mode, 2)
    assert all(p.requires_grad for p in resnet.parameters())


def test_param_groups_layer_decay_and_no_decay_for_1d(resnet: torch.nn.Module) -> None:
    apply_transfer(resnet, "full", 0)
    lr, wd, decay = 0.1, 0.05, 0.5
    ids = block_ids(resnet)
    top = max(ids.values())
    groups = encoder_param_groups(resnet, lr, wd, decay)
    seen = set()
    name_of = {id(p): n for n, p in resnet.named_parameters()}
    for g in groups:
        for p in g["params"]:
            name = name_of[id(p)]
            seen.add(name)
            k = ids[name]
            assert g["lr"] == pytest.approx(lr * decay ** (top + 1 - k)), name
            assert g["weight_decay"] == (0.0 if p.ndim <= 1 else wd), name
    assert seen == set(name_of.values())
    # concretely: layer4 gets lr * 0.5, the stem lr * 0.5**5
    lr_of = {name_of[id(p)]: g["lr"] for g in groups for p in g["params"]}
    assert lr_of["layer4.1.conv2.weight"] == pytest.approx(0.05)
    assert lr_of["conv1.weight"] == pytest.approx(0.1 * 0.5 ** 5)
    assert lr_of["bn1.bias"] == pytest.approx(0.1 * 0.5 ** 5)


def test_param_groups_skip_frozen(resnet: torch.nn.Module) -> None:
    apply_transfer(resnet, "partial", 1)
    groups = encoder_param_groups(resnet, 1e-3, 1e-4, 0.75)
    name_of = {id(p): n for n, p in resnet.named_parameters()}
    names = {name_of[id(p)] for g in groups for p in g["params"]}
    assert names and all(n.startswith("layer4.") for n in names)
    assert names == {n for n, p in resnet.named_parameters() if p.requires_grad}
    assert [g["lr"] for g in groups] == pytest.approx([1e-3 * 0.75] * len(groups))


# ----------------------------------------------------------------------------------------------- GeoNet


def _chips(c: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (2, c, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_geonet_classification() -> None:
    torch.manual_seed(0)
    net = GeoNet(NetSpec("resnet18", 3, "classification", ["morph"], classes=["a", "b", "c", "d"],
                         mean=[100.0, 110.0, 120.0], std=[50.0, 50.0, 50.0])).eval()
    with torch.no_grad():
        out = net(_chips())
    assert out.shape == (2, 4)
    prob = net.to_prediction(out)
    torch.testing.assert_close(prob.sum(1), torch.ones(2))
    assert (prob >= 0).all()
    torch.testing.assert_close(prob, torch.softmax(out, 1))


def test_geonet_normalises_with_band_stats() -> None:
    net = GeoNet(NetSpec("resnet18", 2, "regression", ["y"], mean=[10.0, 20.0], std=[2.0, 4.0]))
    x = torch.tensor([10.0, 20.0]).view(1, 2, 1, 1) + torch.tensor([2.0, 8.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(net.normalise(x), torch.tensor([1.0, 2.0]).view(1, 2, 1, 1))


@pytest.mark.parametrize("sigmoid", [True, False])
def test_geonet_regression(sigmoid: bool) -> None:
    torch.manual_seed(0)
    net = GeoNet(NetSpec("resnet18", 3, "regression", ["a", "b", "c"], sigmoid=sigmoid)).eval()
    assert isinstance(net.head, LinearHead) and net.head.sigmoid is sigmoid
    with torch.no_grad():
        net.head.linear.bias.fill_(5.0 if sigmoid else -5.0)  # push outputs far out of [0, 1] unless squashed
        out = net(_chips())
    assert out.shape == (2, 3)
    if sigmoid:
        assert ((out >= 0) & (out <= 1)).all()
    else:
        assert (out < 0).any()
    torch.testing.assert_close(net.to_prediction(out), out)


def test_geonet_vote_fractions() -> None:
    torch.manual_seed(0)
    net = GeoNet(NetSpec("resnet18", 3, "vote_fractions", list(KAGGLE_TREE.columns))).eval()
    assert isinstance(net.head, DecisionTreeHead)
    with torch.no_grad():
        out = net(_chips())
    assert out.shape == (2, 37)
    assert ((out >= 0) & (out <= 1 + 1e-6)).all()
    assert tree_violations(out.numpy(), KAGGLE_TREE, tol=1e-5) == []


def test_geonet_vote_fractions_needs_kaggle_columns() -> None:
    with pytest.raises(GeocnnError, match="37 Kaggle columns"):
        GeoNet(NetSpec("resnet18", 3, "vote_fractions", list(reversed(KAGGLE_TREE.columns))))


def test_geonet_vote_counts() -> None:
    torch.manual_seed(0)
    net = GeoNet(NetSpec("resnet18", 3, "vote_counts", COLS)).eval()
    assert isinstance(net.head, DirichletHead)
    with torch.no_grad():
        net.head.linear.bias[:2] = 50.0   # saturate: alphas reach the bounds but never leave [1, 100]
        net.head.linear.bias[2:] = -50.0
        out = net(_chips())
    assert out.shape == (2, 5)
    assert ((out >= 1) & (out <= 100)).all()
    torch.testing.assert_close(out[:, :2], torch.full((2, 2), 100.0))
    torch.testing.assert_close(out[:, 2:], torch.full((2, 3), 1.0))
    pred = net.to_prediction(out)
    torch.testing.assert_close(pred[:, :2].sum(1), torch.ones(2))
    torch.testing.assert_close(pred[:, 2:].sum(1), torch.ones(2))
    # the loss on this head's output is finite
    assert torch.isfinite(dirichlet_multinomial_nll(torch.tensor([[3.0, 1.0, 0.0, 2.0, 2.0]] * 2), out, TOY))


def test_geonet_four_band_input() -> None:
    net = GeoNet(NetSpec("resnet18", 4, "classification", ["c"], classes=["x", "y"])).eval()
    with torch.no_grad():
        assert net(_chips(4)).shape == (2, 2)
