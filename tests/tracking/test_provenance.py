"""What an MLflow user expects of every run: provenance tags, a description, the dataset input, an experiment that
opens on training runs, a named logged model with a signature, domain params only, and files others can read."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from geocnn.config import load_config
from geocnn.domains import domain_for, run_experiment
from geocnn.domains.base import fail_run, open_run
from geocnn.synthetic.galaxies import make_galaxies
from geocnn.tracking.runs import tracking_uri

PROJECT = Path(__file__).resolve().parents[2]


def overrides(tmp_path: Path, catalog: Path, *extra: str) -> list[str]:
    return [
        "name=prov", f"output_dir={tmp_path / 'run'}", f"data.store_root={tmp_path / 'stores'}", "data.format=csv",
        f"data.catalog={catalog}", "data.targets=[morphology]", "data.crop=48", "data.chip_size=24",
        "split.method=stratified", "split.val_fraction=0.25", "split.test_fraction=0.25",
        "model.backbone=test_resnet", "model.task=classification", "train.epochs=2", "train.batch_size=32",
        "augment.tta_views=rot4", "tracking.experiment=prov-exp", *extra]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_galaxies(tmp_path_factory.mktemp("syn"), 120, 48, seed=8)


def test_a_run_is_described_attributed_and_readable_by_others(tmp_path: Path, catalog: Path) -> None:
    old = os.umask(0o002)  # a group-shared project: outputs must come out group-writable, as any file the user writes
    try:
        summary = run_experiment(load_config(overrides=overrides(tmp_path, catalog)), progress=False)
    finally:
        os.umask(old)
    client = MlflowClient(tracking_uri())
    run = client.get_run(summary["run_id"])
    tags = run.data.tags

    # provenance: who, what command, which commit of the code
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    head = subprocess.run(["git", "-C", str(PROJECT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()
    assert tags["geocnn.task"] == "classification" and tags["geocnn.domain"] == "galaxy"
    # the description: what was trained on what, the headline metric beside its baseline
    note = tags["mlflow.note.content"]
    m = summary["metrics"]
    assert note.startswith("test_resnet (classification) trained on 120 samples of ")
    assert (f"accuracy {m['test/accuracy']:.4f} [95% bootstrap interval {m['test/accuracy_ci_low']:.4f}, "
            f"{m['test/accuracy_ci_high']:.4f}] vs baseline {m['baseline/accuracy']:.4f}") in note
    # the dataset input (the UI's Dataset column): name, content digest, source, schema, rows
    [inp] = run.inputs.dataset_inputs
    assert inp.dataset.name == "prov-data" and inp.dataset.digest == summary["store_key"][:36]
    assert str(catalog) in inp.dataset.source and "morphology" in inp.dataset.schema
    assert '"num_rows": 120' in inp.dataset.profile
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    # an experiment that opens on its training runs (not MLflow 3's GenAI overview)
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # params: this domain's keys only, output_dir resolved
    assert not [k for k in run.data.params if k.startswith(("earth.", "two_stage.", "maps."))]
    assert run.data.params["output_dir"] == str((tmp_path / "run").resolve())
    assert run.data.params["augment.tta_views"] == "4"  # rot4
    # the logged model: a meaningful name and a signature beside the input example
    info = mlflow.models.get_model_info(summary["model_uri"])
    assert info.name == "prov-exp-prov"
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 24, 24)
    assert info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 5)
    # registered (the first model is promoted: no champion yet), with the run's description on the version
    version = client.get_model_version("prov", summary["registered_version"])
    assert version.description == note

    # checkpoints: gone after a completed run (the bundle holds the weights), and the summary says how much
    assert not list((tmp_path / "run").rglob("*.ckpt")) and summary["checkpoints_freed_bytes"] > 0
    # file modes follow the umask: outputs, the bundle folder and the MLflow artifacts
    artifacts = Path(os.environ["GEOCNN_MLFLOW_ARTIFACTS"])
    checked = 0
    for root in (tmp_path / "run", artifacts, tmp_path / "stores"):
        for path in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            want = 0o775 if path.is_dir() else 0o664
            assert mode & want == want, f"{path}: {oct(mode)}"
            checked += 1
    assert checked > 30


def test_keep_checkpoints_keeps_them(tmp_path: Path, catalog: Path) -> None:
    summary = run_experiment(load_config(overrides=overrides(
        tmp_path, catalog, "train.epochs=1", "train.keep_checkpoints=true", "tracking.enabled=false")), progress=False)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists() and summary["checkpoints_freed_bytes"] == 0


def test_a_run_that_failed_before_any_checkpoint_is_reopened_but_not_tagged_resumed(tmp_path: Path,
                                                                                     catalog: Path) -> None:
    cfg = load_config(overrides=overrides(tmp_path, catalog))
    first = open_run(cfg, domain_for(cfg))
    fail_run(first)  # e.g. the first epoch crashed: nothing to resume from
    again = open_run(cfg, domain_for(cfg))
    assert again == first
    tags = MlflowClient(tracking_uri()).get_run(again).data.tags
    assert "geocnn.resumed" not in tags and "geocnn.resume_count" not in tags
    fail_run(again, interrupted=True)
    assert MlflowClient(tracking_uri()).get_run(again).info.status == "KILLED"
