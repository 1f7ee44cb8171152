"""Unattended runs: the retrain and predict deployments on schedules, against $PREFECT_API_URL or a local server."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.schedules import Cron, Interval
from prefect.settings import PREFECT_API_URL, temporary_settings

from geocnn.config import AnyExperiment
from geocnn.domains import domain_for
from geocnn.errors import GeocnnError

DEFAULT_HOME = Path("data/prefect")


@dataclass
class Plan:
    """What `geocnn serve` schedules: each deployment's schedule (cron or seconds) and parameters."""

    retrain: dict[str, Any] | None
    predict: dict[str, Any] | None
    retrain_schedule: str | float | None
    predict_schedule: str | float | None
    timezone: str


def watch_paths(cfg: AnyExperiment, input_dir: str | None = None, output_dir: str | None = None,
                model: str | None = None) -> tuple[Path, Path, str]:
    """The watch folder, the prediction output folder (absolute) and the model (default: NAME@champion)."""
    src = Path((input_dir or cfg.schedule.input_dir).format(name=cfg.name)).resolve()
    out = Path((output_dir or cfg.schedule.output_dir).format(name=cfg.name)).resolve()
    name = cfg.tracking.registered_model or cfg.name
    ref = model or cfg.schedule.model or f"models:/{name}@{cfg.tracking.alias}"
    if "://" not in ref and not ref.startswith(("models:/", "runs:/")):
        ref = str(Path(ref).resolve())
    return src, out, ref


def plan(cfg: AnyExperiment, config_path: Path, overrides: list[str], retrain: str | float | None,
         predict: str | float | None, input_dir: str | None = None, output_dir: str | None = None,
         model: str | None = None) -> Plan:
    """The deployments to serve: schedules from the command line, else from the config's schedule section."""
    retrain = retrain if retrain is not None else cfg.schedule.retrain_cron
    predict = predict if predict is not None else cfg.schedule.predict_cron
    if retrain is None and predict is None:
        raise GeocnnError("nothing to serve: set schedule.retrain_cron and/or schedule.predict_cron in the config, "
                          "or pass --retrain-cron/--predict-cron (or --retrain-every/--predict-every SECONDS)")
    for what, value in (("retrain", retrain), ("predict", predict)):
        if value is not None:
            schedule_of(value, cfg.schedule.timezone, what)  # a bad cron or interval fails before any server starts
    src, out, ref = watch_paths(cfg, input_dir, output_dir, model)
    if predict is not None:
        if src.exists() and not src.is_dir():
            raise GeocnnError(f"watch folder {src} is a file; give --input a folder (or set schedule.input_dir)")
        if out.exists() and not out.is_dir():
            raise GeocnnError(f"prediction output {out} is a file; give --output a folder (or set "
                              "schedule.output_dir)")
        if "://" not in ref and not ref.startswith(("models:/", "runs:/")) and not Path(ref).exists():
            raise GeocnnError(f"--model {ref}: no such bundle folder; give a bundle (data/runs/NAME/bundle) or a "
                              "registered model (models:/NAME@champion)")
        src.mkdir(parents=True, exist_ok=True)
    s = cfg.schedule
    return Plan(
        retrain={"config": str(config_path.resolve()), "overrides": list(overrides)} if retrain is not None else None,
        predict={"input_dir": str(src), "output_dir": str(out), "model": ref, "patterns": list(s.patterns) or None,
                 "min_age_s": s.min_age_s, "max_attempts": s.max_attempts,
                 "batch_size": domain_for(cfg).predict_batch_size(cfg), "device": cfg.train.device,
                 "stride_px": domain_for(cfg).map_stride(cfg), "orchestration": cfg.orchestration.model_dump()}
        if predict is not None else None,
        retrain_schedule=retrain, predict_schedule=predict, timezone=s.timezone)


def schedule_of(value: str | float, timezone: str, what: str = "schedule") -> Any:
    """A Prefect schedule: a cron string, or an interval in seconds."""
    if isinstance(value, (int, float)):
        if not value > 0:
            raise GeocnnError(f"--{what}-every {value}: the interval must be a positive number of seconds")
        return Interval(float(value), timezone=timezone)
    try:
        return Cron(value, timezone=timezone)
    except ValueError as exc:
        raise GeocnnError(f"{what} schedule {value!r} (--{what}-cron or schedule.{what}_cron): not a valid cron "
                          f"expression ({exc}); e.g. '0 3 * * *' = 03:00 daily, '*/15 * * * *' = every 15 minutes"
                          ) from None


def describe_schedule(value: str | float, timezone: str) -> str:
    """A schedule as people read it: 'every 1 min 30 s' for intervals, 'cron 0 3 * * 0 (UTC)' for crons."""
    if isinstance(value, (int, float)):
        seconds = float(value)
        parts = []
        for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
            if seconds >= size:
                parts.append(f"{int(seconds // size)} {unit}")
                seconds %= size
        if seconds or not parts:
            parts.append(f"{seconds:g} s")
        return "every " + " ".join(parts)
    return f"cron '{value}' ({timezone})"


DEFAULT_PORT = 4200
"""Prefect's usual server port: `geocnn serve` takes it when it is free."""


def pick_port(port: int | None) -> tuple[int, str | None]:
    """The server's port: ``port`` (refused if taken), else 4200 when free, else a free one (and why)."""
    if port is not None:
        if not port_free(port):
            raise GeocnnError(f"--port {port}: the port is in use on 127.0.0.1; choose another (or stop what uses it)")
        return port, None
    if port_free(DEFAULT_PORT):
        return DEFAULT_PORT, None
    other = free_port()
    return other, f"port {DEFAULT_PORT} is in use; serving on {other} (choose with --port)"


def port_free(port: int) -> bool:
    """Whether ``port`` can be bound on the loopback interface."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, even by SIGKILL (Linux), so no server is left orphaned."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def prefect_api(home: Path | None = None, port: int | None = None, timeout_s: float = 120) -> Iterator[str]:
    """$PREFECT_API_URL when set; else a local Prefect server (SQLite under ``home``, bound to 127.0.0.1) started
    for as long as the block runs. Prefect's temporary per-process server does not run the scheduler, so serving
    on a schedule needs a real one."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        yield url
        return
    home = Path(os.environ.get("PREFECT_HOME") or home or DEFAULT_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    # the UI asks /ui-settings where the API is: the address served here, not Prefect's default port
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": url, "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port)}
    log = open(home / "server.log", "ab")
    prefect = Path(sys.executable).with_name("prefect")
    proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_die_with_parent)
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (home / "server.log").read_text(errors="replace")[-2000:]
                raise GeocnnError(f"the local Prefect server did not start (log {home / 'server.log'}):\n{tail}")
            time.sleep(0.5)
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url  # flow runs started by the runner inherit it
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):
                yield url
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
