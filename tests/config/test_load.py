"""Config loading: strict keys, types, dotted overrides, ${ENV} expansion, split fractions, flatten, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import geocnn.config as config_mod
from geocnn.config import DATA_ENV, EarthExperiment, GalaxyExperiment, apply_overrides, expand_env, flatten, load_config
from geocnn.errors import GeocnnError

PROJECT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((PROJECT / "configs").glob("*.yaml"))


def _write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("text", "dotted"),
    [
        ("nme: x\n", "nme"),
        ("data:\n  chip_sise: 32\n", "data.chip_sise"),
        ("model:\n  backbon: resnet18\n", "model.backbon"),
        ("train:\n  optimizer:\n    lrr: 0.1\n", "train.optimizer.lrr"),
        ("augment:\n  rotat: false\n", "augment.rotat"),
    ],
)
def test_unknown_key_in_yaml_names_dotted_key(tmp_path: Path, text: str, dotted: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(GeocnnError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert f"unknown key '{dotted}'" in msg
    assert str(path) in msg


@pytest.mark.parametrize("override", ["train.optimizer.lrr=0.1", "model.backbon=resnet18", "epochs=3"])
def test_unknown_key_in_override_names_dotted_key(override: str) -> None:
    dotted = override.split("=")[0]
    with pytest.raises(GeocnnError, match=f"unknown key '{dotted}'"):
        load_config(None, [override])


def test_several_unknown_keys_are_all_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  cropp: 3\ntrain:\n  optimizer:\n    lrr: 0.1\n")
    with pytest.raises(GeocnnError) as exc:
        load_config(path)
    assert "data.cropp" in str(exc.value) and "train.optimizer.lrr" in str(exc.value)


# ----------------------------------------------------------------------------------------------- value types


@pytest.mark.parametrize(
    ("text", "dotted"),
    [
        ("train:\n  epochs: many\n", "train.epochs"),
        ("train:\n  optimizer:\n    lr: fast\n", "train.optimizer.lr"),
        ("model:\n  task: segmentation\n", "model.task"),
        ("data:\n  targets: notalist\n", "data.targets"),
        ("data:\n  chip_size: 0\n", "data.chip_size"),
        ("augment:\n  rotate: [1, 2]\n", "augment.rotate"),
    ],
)
def test_wrong_value_type_names_key(tmp_path: Path, text: str, dotted: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(GeocnnError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert f"key '{dotted}'" in msg
    assert "unknown key" not in msg


def test_wrong_type_in_override_names_key() -> None:
    with pytest.raises(GeocnnError, match=r"key 'train\.batch_size'"):
        load_config(None, ["train.batch_size=big"])


# ----------------------------------------------------------------------------------------------- overrides


def test_dotted_overrides_apply_on_top_of_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: base\ntrain:\n  epochs: 20\n  batch_size: 8\n  optimizer:\n    lr: 0.5\n"
                            "model:\n  backbone: resnet18\n")
    cfg = load_config(path, ["train.epochs=3", "model.backbone=convnext_atto", "data.targets=[a,b]",
                             "train.optimizer.lr=1e-2", "augment.rotate=false", "name=over"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.model.backbone == "convnext_atto"
    assert cfg.data.targets == ["a", "b"]
    assert cfg.train.optimizer.lr == pytest.approx(0.01)
    assert cfg.augment.rotate is False
    assert cfg.name == "over"
    # keys not overridden keep the file's values / defaults
    assert cfg.train.batch_size == 8
    assert cfg.train.eval_batch_size == 128
    assert cfg.train.optimizer.name == "adamw"


def test_later_override_wins_and_nested_sections_are_created() -> None:
    cfg = load_config(None, ["train.epochs=3", "train.epochs=7", "split.seed=11"])
    assert cfg.train.epochs == 7
    assert cfg.split.seed == 11


def test_override_without_equals_sign_errors() -> None:
    with pytest.raises(GeocnnError, match="key.sub=value"):
        load_config(None, ["train.epochs"])


def test_override_through_a_scalar_errors() -> None:
    with pytest.raises(GeocnnError, match="'name' is a value"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_override_value_with_equals_sign_is_kept_whole() -> None:
    cfg = load_config(None, ["name=a=b"])
    assert cfg.name == "a=b"


# ----------------------------------------------------------------------------------------------- environment


def test_shared_data_defaults_to_project_sibling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    expected = PROJECT.parent / "shared" / "data"
    assert Path(config_mod.shared_data_default()) == expected
    path = _write(tmp_path, "data:\n  catalog: ${GEOCNN_SHARED_DATA}/galaxy/x.csv\n")
    cfg = load_config(path)
    assert Path(cfg.data.catalog) == expected / "galaxy" / "x.csv"


def test_shared_data_env_var_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV, "/elsewhere/data")
    path = _write(tmp_path, "data:\n  catalog: ${GEOCNN_SHARED_DATA}/galaxy/x.csv\n  images: ${GEOCNN_SHARED_DATA}\n")
    cfg = load_config(path)
    assert cfg.data.catalog == "/elsewhere/data/galaxy/x.csv"
    assert cfg.data.images == "/elsewhere/data"


def test_env_in_override_is_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOCNN_TEST_ROOT", "/tmp/stores")
    cfg = load_config(None, ["data.store_root=${GEOCNN_TEST_ROOT}/s"])
    assert cfg.data.store_root == "/tmp/stores/s"


def test_unset_variable_without_default_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEOCNN_SURELY_UNSET_VAR", raising=False)
    path = _write(tmp_path, "data:\n  catalog: ${GEOCNN_SURELY_UNSET_VAR}/x.csv\n")
    with pytest.raises(GeocnnError, match="GEOCNN_SURELY_UNSET_VAR"):
        load_config(path)


def test_unset_variable_with_default_uses_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEOCNN_SURELY_UNSET_VAR", raising=False)
    assert expand_env("a/${GEOCNN_SURELY_UNSET_VAR:-fallback}/b") == "a/fallback/b"
    monkeypatch.setenv("GEOCNN_SURELY_UNSET_VAR", "set")
    assert expand_env("a/${GEOCNN_SURELY_UNSET_VAR:-fallback}/b") == "a/set/b"
    assert expand_env("no variables here") == "no variables here"


# ----------------------------------------------------------------------------------------------- split fractions


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (0.6, 0.5), (0.9, 0.1)])
def test_val_plus_test_fraction_at_least_one_errors(tmp_path: Path, val: float, test: float) -> None:
    path = _write(tmp_path, f"split:\n  val_fraction: {val}\n  test_fraction: {test}\n")
    with pytest.raises(GeocnnError, match="val_fraction"):
        load_config(path)


def test_val_plus_test_fraction_below_one_is_fine() -> None:
    cfg = load_config(None, ["split.val_fraction=0.4", "split.test_fraction=0.59"])
    assert cfg.split.val_fraction + cfg.split.test_fraction == pytest.approx(0.99)


# ----------------------------------------------------------------------------------------------- files


def test_missing_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(GeocnnError, match="does not exist"):
        load_config(missing)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_yaml_errors(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(GeocnnError, match="mapping"):
        load_config(path)


def test_invalid_yaml_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, "data: [unclosed\n")
    with pytest.raises(GeocnnError, match="not valid YAML"):
        load_config(path)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, ""))
    assert cfg == GalaxyExperiment()
    assert cfg.train.epochs == 20 and cfg.data.crop == 207


def test_output_dir_expands_name() -> None:
    cfg = load_config(None, ["name=abc"])
    assert cfg.out == Path("data/runs/abc")


# ----------------------------------------------------------------------------------------------- flatten


def test_flatten_gives_dotted_leaf_keys() -> None:
    cfg = load_config(None, ["train.optimizer.lr=0.02", "data.targets=[x,y]"])
    flat = flatten(cfg)
    assert flat["train.optimizer.lr"] == pytest.approx(0.02)
    assert flat["data.targets"] == ["x", "y"]
    assert flat["name"] == "experiment"
    assert flat["model.backbone"] == "resnet18"
    assert not any(isinstance(v, dict) for v in flat.values())
    # every section appears only through its leaves
    assert "train" not in flat and "train.optimizer" not in flat
    # one flattened key per leaf of the dumped tree
    def leaves(tree: dict) -> int:
        return sum(leaves(v) if isinstance(v, dict) else 1 for v in tree.values())
    assert len(flat) == leaves(cfg.model_dump())


def test_flatten_of_plain_dict() -> None:
    assert flatten({"a": {"b": {"c": 1}, "d": 2}, "e": 3}) == {"a.b.c": 1, "a.d": 2, "e": 3}
    assert flatten({"a": {"b": 1}}, prefix="p.") == {"p.a.b": 1}


# ----------------------------------------------------------------------------------------------- shipped configs


def test_there_are_shipped_configs() -> None:
    assert len(CONFIGS) >= 1


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, EarthExperiment if path.name.startswith("poverty") else GalaxyExperiment)
    raw = yaml.safe_load(expand_env(path.read_text()))
    # the values written in the file are the values loaded (nothing silently dropped)
    flat = flatten(cfg)
    for key, value in flatten(raw).items():
        assert flat[key] == value, key


# ----------------------------------------------------------------------------------------------- known bugs


def test_env_reference_in_yaml_comment_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEOCNN_SURELY_UNSET_VAR", raising=False)
    path = _write(tmp_path, "# point ${GEOCNN_SURELY_UNSET_VAR} at your own data\nname: x\n")
    assert load_config(path).name == "x"


def test_env_value_with_hash_is_taken_literally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV, "/mnt/survey #2")
    path = _write(tmp_path, "data:\n  catalog: ${GEOCNN_SHARED_DATA}/x.csv\n")
    assert load_config(path).data.catalog == "/mnt/survey #2/x.csv"


def test_env_value_with_colon_space_is_taken_literally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV, "/mnt/a: b")
    path = _write(tmp_path, "data:\n  catalog: ${GEOCNN_SHARED_DATA}/x.csv\n")
    assert load_config(path).data.catalog == "/mnt/a: b/x.csv"


def test_numeric_looking_override_of_string_key() -> None:
    cfg = load_config(None, ["name=2024", "tracking.experiment=7"])
    assert cfg.name == "2024" and cfg.tracking.experiment == "7"


@pytest.mark.parametrize(("monitor", "mode", "expected"), [
    (None, "auto", "min"), ("val/loss", "auto", "min"), ("val/accuracy", "auto", "max"),
    ("val/auc", "auto", "max"), ("val/r2", "auto", "max"), ("val/rmse", "auto", "min"), ("val/accuracy", "min", "min"),
])
def test_monitor_direction_is_inferred_from_the_metric_name(monitor: str | None, mode: str, expected: str) -> None:
    from geocnn.config import TrainConfig

    assert TrainConfig(monitor=monitor, monitor_mode=mode).monitor_direction == expected
