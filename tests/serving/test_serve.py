"""Unattended runs for real: `geocnn serve` on a fast schedule in a subprocess, and a real MLflow tracking server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from geocnn.serving.schedules import free_port
from geocnn.serving.watch import Ledger
from tests.serving.test_watch import drop, galaxy_bundle
from tests.test_interrupts import default_sigint

GEOCNN = [sys.executable, "-m", "geocnn.cli"]


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll ``condition`` until it returns a truthy value; fail with the subprocess log after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(1)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}")


def ledger_items(out: Path) -> dict[str, dict]:
    if not (out / "ledger.sqlite").exists():
        return {}
    ledger = Ledger(out)
    try:
        return {i["path"]: i for i in ledger.items()}
    finally:
        ledger.close()


def stop(proc: subprocess.Popen) -> None:
    """Ctrl-C the process group and wait (the served runner and its local server must both go)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def printed(log: Path, prefix: str) -> str | None:
    """The value after ``prefix`` on the first log line holding it."""
    for line in log.read_text(errors="replace").splitlines():
        if prefix in line:
            return line.split(prefix, 1)[1].split()[0]
    return None


def check_ui(ui: str, api: str, tmp_path: Path) -> None:
    """The printed addresses work: the UI's settings point at the API served here, the API answers and lists the
    served runs (the one with a broken file Failed, saying why), and a browser renders them on the runs page."""
    with urllib.request.urlopen(f"{ui}/ui-settings", timeout=10) as r:
        assert json.load(r)["api_url"] == api
    body = {"flow_runs": {"state": {"type": {"any_": ["FAILED", "COMPLETED"]}}}, "limit": 50}
    request = urllib.request.Request(f"{api}/flow_runs/filter", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        runs = json.load(r)
    failed = [r for r in runs if r["state_type"] == "FAILED"]
    assert failed and "1 file(s) failed" in failed[0]["state"]["message"], [r["state_name"] for r in runs]
    assert any(r["state_type"] == "COMPLETED" for r in runs)  # the first drop, all files fine
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is needed for the UI check (.ci/run installs it)")
        pytest.skip("no chromium here for the UI screenshot")
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
               "--window-size=1400,900"]
    dom = subprocess.run([*browser, "--dump-dom", f"{ui}/runs"], capture_output=True, text=True, timeout=120).stdout
    assert "Can't connect to Server API" not in dom and "predict-new-data" in dom and "served-predict" in dom
    shot = tmp_path / "prefect_runs.png"
    subprocess.run([*browser, f"--screenshot={shot}", f"{ui}/runs"], capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000  # a rendered page, not an empty one


@pytest.mark.slow
def test_served_prediction_deployment_processes_each_drop_exactly_once(tmp_path: Path) -> None:
    model = galaxy_bundle(tmp_path / "bundle")
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    config = tmp_path / "serve.yaml"
    config.write_text("name: served\nschedule:\n  min_age_s: 0.5\n")
    drop(inbox, ["a1.png", "a2.png"], seed=1)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_RUNNER_POLL_FREQUENCY": "2",
           "PREFECT_API_URL": "", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL")
    log = tmp_path / "serve.log"
    port = free_port()
    with open(log, "wb") as fh:
        proc = subprocess.Popen([*GEOCNN, "serve", str(config), "--no-retrain", "--predict-every", "5",
                                 "--input", str(inbox), "--output", str(out), "--model", str(model),
                                 "--port", str(port)],
                                env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=default_sigint)
    try:
        ui = wait_for(lambda: printed(log, "Prefect UI:"), 120, "the UI address", proc, log)
        api = printed(log, "export PREFECT_API_URL=").split(";")[0]
        assert ui == f"http://127.0.0.1:{port}" and api == f"{ui}/api"
        assert "every 5 s" in log.read_text()  # an interval reads as a duration
        first = wait_for(lambda: (lambda i: i if {"a1.png", "a2.png"} <= set(i) else None)(ledger_items(out)),
                         240, "the first scheduled run to predict a1, a2", proc, log)
        # dropped after that run: the next scheduled run must pick them up (and only them)
        drop(inbox, ["b1.png", "b2.png", "b3.png"], seed=7)
        (inbox / "b_bad.png").write_bytes(b"broken")
        items = wait_for(lambda: (lambda i: i if {"b1.png", "b2.png", "b3.png", "b_bad.png"} <= set(i) else None)(
            ledger_items(out)), 180, "a later run to predict the second drop", proc, log)
        time.sleep(8)  # at least one more scheduled run passes over the same files
        items = ledger_items(out)
        check_ui(ui, api, tmp_path)
    finally:
        stop(proc)
    assert proc.returncode is not None
    batches_a = {first[p]["batch"] for p in ("a1.png", "a2.png")}
    batches_b = {items[p]["batch"] for p in ("b1.png", "b2.png", "b3.png")}
    assert len(batches_a) == 1 and len(batches_b) == 1 and batches_a != batches_b  # two different runs
    assert {items[p]["run"] for p in ("a1.png", "b1.png")} == {first["a1.png"]["run"], items["b1.png"]["run"]}
    assert first["a1.png"]["run"] != items["b1.png"]["run"] and items["b1.png"]["run"]
    assert items["a1.png"]["batch"] == first["a1.png"]["batch"]  # not redone
    assert items["b_bad.png"]["status"] == "failed" and items["b_bad.png"]["attempts"] >= 1
    table = pd.read_parquet(out / "predictions.parquet")
    assert sorted(table["id"]) == ["a1", "a2", "b1", "b2", "b3"]  # each exactly once
    text = log.read_text(errors="replace")
    assert "Starting" in text or "served" in text.lower()


@pytest.mark.slow
def test_training_against_a_real_mlflow_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    from geocnn.config import load_config
    from geocnn.domains import run_experiment
    from geocnn.inference.bundle import load_bundle
    from geocnn.synthetic.galaxies import make_galaxies
    from geocnn.tracking.model_uri import resolve_model

    port = free_port()
    log = tmp_path / "mlflow.log"
    with open(log, "wb") as fh:
        server = subprocess.Popen([*GEOCNN, "tracking-server", "--port", str(port), "--db", str(tmp_path / "srv.db"),
                                   "--artifacts", str(tmp_path / "srv_artifacts")], stdout=fh,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=default_sigint)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, 120, "the MLflow server", server, log)
        catalog = make_galaxies(tmp_path / "syn", 120, 64, seed=2)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        cfg = load_config(overrides=[
            "name=served_mlflow", f"output_dir={tmp_path / 'run'}", f"data.store_root={tmp_path / 'stores'}",
            "data.format=csv", f"data.catalog={catalog}", "data.targets=[morphology]", "data.crop=48",
            "data.chip_size=32", "split.method=stratified", "model.backbone=test_resnet", "train.epochs=2",
            "augment.tta_views=1", "tracking.experiment=over_http"])
        summary = run_experiment(cfg, progress=False)
        client = MlflowClient(url)
        run = client.get_run(summary["run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.metrics["test/accuracy"] == pytest.approx(summary["metrics"]["test/accuracy"])
        assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 2
        # the summary's run page is on the server's UI
        from geocnn.cli import print_summary
        from geocnn.tracking.runs import run_url

        page = run_url(summary["experiment_id"], run.info.run_id)
        assert page == f"{url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        with urllib.request.urlopen(page.split("#")[0], timeout=10) as r:
            assert r.status == 200
        print_summary(summary)
        assert f"run page     {page}" in capsys.readouterr().out
        version = client.get_model_version_by_alias("served_mlflow", "champion")
        assert version.run_id == run.info.run_id
        # the artifacts went through the server into its artifact root, not to a local folder of the client
        assert list((tmp_path / "srv_artifacts").rglob("bundle.json"))
        bundle = load_bundle(resolve_model("models:/served_mlflow@champion"))
        assert bundle.spec.classes == summary_classes(tmp_path / "run")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def summary_classes(run_dir: Path) -> list[str]:
    import json

    return json.loads((run_dir / "bundle" / "bundle.json").read_text())["preprocessing"]["classes"]


@pytest.mark.slow
def test_prefect_yaml_deploys_to_a_work_pool_and_a_worker_runs_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The project's prefect.yaml, as a user with a server and workers runs it: deploy, trigger, worker executes."""
    import asyncio

    from prefect import get_client

    async def read_deployments() -> list:
        async with get_client() as client:
            return await client.read_deployments()

    import json

    from geocnn.serving.schedules import prefect_api

    project = Path(__file__).resolve().parents[2]
    model = galaxy_bundle(tmp_path / "bundle")
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    drop(inbox, ["w1.png", "w2.png"], seed=3)
    prefect = Path(sys.executable).with_name("prefect")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with prefect_api() as url:
        env = {**os.environ, "PREFECT_API_URL": url, "GEOCNN_PROJECT_DIR": str(project)}

        def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
            return subprocess.run([str(prefect), *args], env=env, cwd=project, capture_output=True, text=True,
                                  timeout=timeout)

        assert cli("work-pool", "create", "geocnn", "--type", "process").returncode == 0
        deployed = cli("--no-prompt", "deploy", "--all")
        assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
        deployments = {d.name: d for d in asyncio.run(read_deployments())}
        assert set(deployments) == {"galaxy-demo-retrain", "galaxy-demo-predict", "poverty-demo-retrain",
                                    "poverty-demo-predict"}
        assert deployments["galaxy-demo-predict"].schedules[0].schedule.cron == "*/15 * * * *"
        assert deployments["galaxy-demo-retrain"].parameters == {"config": "configs/galaxy_demo.yaml"}
        params = {"input_dir": str(inbox), "output_dir": str(out), "model": str(model), "min_age_s": 0}
        started = cli("deployment", "run", "predict-new-data/galaxy-demo-predict", "--params", json.dumps(params))
        assert started.returncode == 0, started.stderr[-2000:]
        worker = cli("worker", "start", "--pool", "geocnn", "--run-once", timeout=300)
        assert worker.returncode == 0, worker.stderr[-3000:]

        # `geocnn serve` with PREFECT_API_URL set registers its deployment on that server and serves it from there
        inbox2, out2 = tmp_path / "inbox2", tmp_path / "out2"
        drop(inbox2, ["s1.png"], seed=11)
        config = tmp_path / "api.yaml"
        config.write_text("name: api_served\n")
        log = tmp_path / "serve_api.log"
        with open(log, "wb") as fh:
            served = subprocess.Popen([*GEOCNN, "serve", str(config), "--no-retrain", "--predict-every", "4",
                                       "--input", str(inbox2), "--output", str(out2), "--model", str(model)],
                                      env={**env, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}, stdout=fh,
                                      stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=default_sigint)
        try:
            wait_for(lambda: "s1.png" in ledger_items(out2), 180, "serve against PREFECT_API_URL", served, log)
        finally:
            stop(served)
        assert "api_served-predict" in {d.name for d in asyncio.run(read_deployments())}
        assert url in log.read_text(errors="replace")
    table = pd.read_parquet(out / "predictions.parquet")
    assert sorted(table["id"]) == ["w1", "w2"]
