"""Prefect behaviour of the flows: ingest cached by input content, I/O retries (never for bad input), artifacts."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pandas as pd
import pytest
from prefect import flow, task

from geocnn.config import load_config
from geocnn.errors import GeocnnError
from pipelines.policies import IO_RETRIES, cached_store
from tests.conftest import write_rgb


def read_artifacts(key: str) -> list[dict]:
    """Artifacts with this key, newest first, through Prefect's own client."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def read() -> list[dict]:
        async with get_client() as client:
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                               sort=ArtifactSort.CREATED_DESC, limit=5)
            return [{"data": a.data, "type": a.type, "flow_run_id": a.flow_run_id} for a in arts]

    return asyncio.run(read())


def small_catalog(folder: Path, n: int = 12) -> Path:
    rows = []
    for i in range(n):
        write_rgb(folder / f"g{i}.png", size=40, seed=i)
        rows.append({"id": f"g{i}", "file": f"g{i}.png", "morphology": ["a", "b"][i % 2]})
    pd.DataFrame(rows).to_csv(folder / "catalog.csv", index=False)
    return folder / "catalog.csv"


def test_ingest_is_cached_by_input_content(tmp_path: Path) -> None:
    from pipelines.experiment import ingest_task

    catalog = small_catalog(tmp_path / "imgs")
    cfg = load_config(overrides=[f"data.catalog={catalog}", "data.targets=[morphology]", "data.crop=40",
                                 "data.chip_size=16", f"data.store_root={tmp_path / 'stores'}"])

    @flow
    def ingest_twice() -> list[str]:
        states = [ingest_task(cfg, progress=False, return_state=True) for _ in range(2)]
        return [s.name for s in states]

    assert ingest_twice() == ["Completed", "Cached"]

    @flow
    def ingest_again() -> str:
        return ingest_task(cfg, progress=False, return_state=True).name

    assert ingest_again() == "Cached"  # across flow runs too
    write_rgb(tmp_path / "imgs" / "g3.png", size=40, value=7)  # same name and size, new pixels
    assert ingest_again() == "Completed"

    @flow
    def rebuilt_when_deleted() -> bool:
        store = ingest_task(cfg, progress=False)
        import shutil

        shutil.rmtree(store.root)
        again = cached_store(ingest_task, cfg, progress=False)
        return (again.root / "meta.json").exists()

    assert rebuilt_when_deleted()


def test_io_tasks_retry_transient_errors_but_not_bad_input() -> None:
    calls = {"io": 0, "user": 0}

    @task(**{**IO_RETRIES, "retry_delay_seconds": [0.1, 0.1, 0.1]})
    def flaky() -> str:
        calls["io"] += 1
        if calls["io"] < 3:
            raise OSError("network filesystem hiccup")
        return "ok"

    @task(**{**IO_RETRIES, "retry_delay_seconds": [0.1, 0.1, 0.1]})
    def bad_input() -> None:
        calls["user"] += 1
        raise GeocnnError("catalog.csv row 3: column 'file' is empty")

    @flow
    def both() -> tuple[str, str]:
        return flaky(), bad_input(return_state=True).name

    assert both() == ("ok", "Failed")
    assert calls == {"io": 3, "user": 1}
    assert IO_RETRIES["retries"] == 3
    assert list(IO_RETRIES["retry_delay_seconds"](3)) == [2, 4, 8]  # exponential backoff


def test_predict_flow_reports_what_it_processed(tmp_path: Path) -> None:
    from pipelines.predict import predict_flow
    from tests.serving.test_watch import drop, galaxy_bundle

    model = galaxy_bundle(tmp_path / "bundle")
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    drop(inbox, ["x.png", "y.png"])
    (inbox / "z.png").write_bytes(b"junk")
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    from geocnn.serving.batch import FilesFailed

    with pytest.raises(FilesFailed, match="1 file\\(s\\) failed, 0 given up; 2 predicted") as failed:
        predict_flow(str(inbox), str(out), str(model), min_age_s=0)
    summary = failed.value.summary
    assert (summary["n_done"], summary["n_failed"]) == (2, 1)
    with get_client(sync_client=True) as client:  # the flow run says so: Failed, not a green Completed
        [run] = client.read_flow_runs(limit=1, sort=FlowRunSort.START_TIME_DESC)
        assert run.state.is_failed() and "1 file(s) failed" in run.state.message
    report = read_artifacts("watch-folder-report")[0]
    assert "predicted: 2" in report["data"] and "`z.png`" in report["data"] and str(out) in report["data"]
    table = read_artifacts("watch-folder-items")[0]
    assert table["type"] == "table" and "z.png" in str(table["data"]) and "failed" in str(table["data"])


@pytest.mark.parametrize("bad", ["61 * * * *", "every day"])
def test_serve_refuses_a_bad_cron(tmp_path: Path, bad: str) -> None:
    from geocnn.serving.schedules import plan
    from pipelines.deployments import deployments

    cfg = load_config(overrides=["name=x", f"schedule.input_dir={tmp_path / 'in'}"])
    with pytest.raises(GeocnnError, match="not a valid cron"):  # the plan is checked before any server starts
        plan(cfg, tmp_path / "x.yaml", [], None, bad)
    with pytest.raises(GeocnnError, match="not a valid cron"):
        deployments(dataclasses.replace(plan(cfg, tmp_path / "x.yaml", [], None, 60.0), predict_schedule=bad), "x")


def test_serve_needs_a_schedule(tmp_path: Path) -> None:
    from geocnn.serving.schedules import plan

    with pytest.raises(GeocnnError, match="nothing to serve"):
        plan(load_config(overrides=["name=x"]), tmp_path / "x.yaml", [], None, None)


def test_retrain_flow_registers_each_run_and_keeps_the_champion_on_a_tie(tmp_path: Path) -> None:
    import yaml
    from mlflow import MlflowClient

    from geocnn.synthetic.galaxies import make_galaxies
    from geocnn.tracking.runs import tracking_uri
    from pipelines.retrain import retrain_flow

    catalog = make_galaxies(tmp_path / "syn", 60, 48, seed=4)
    config = tmp_path / "retrain.yaml"
    config.write_text(yaml.safe_dump({
        "name": "retrained", "output_dir": str(tmp_path / "run"),
        "data": {"format": "csv", "catalog": str(catalog), "targets": ["morphology"], "crop": 48, "chip_size": 24,
                 "store_root": str(tmp_path / "stores")},
        "split": {"method": "stratified", "val_fraction": 0.3, "test_fraction": 0.2},
        "model": {"backbone": "test_resnet", "task": "classification"},
        "train": {"epochs": 1, "batch_size": 16, "num_threads": 2}, "augment": {"tta_views": 1},
        "tracking": {"register": "always"}}))  # every retraining a version, promoted or not
    first = retrain_flow(str(config))
    second = retrain_flow(str(config))  # same data, same seed: the same validation score, so no promotion
    assert (first["registered_version"], first["promoted"]) == ("1", "true")
    assert second["registered_version"] == "2" and second["promoted"] == "false"
    assert second["metrics"]["validation/accuracy"] == pytest.approx(first["metrics"]["validation/accuracy"])
    client = MlflowClient(tracking_uri())
    assert str(client.get_model_version_by_alias("retrained", "champion").version) == "1"
    assert "same split definition" in client.get_model_version("retrained", "2").tags["geocnn.promotion.compared_on"]
