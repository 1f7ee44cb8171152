"""Prefect task runners for independent units: sequential, threads, Dask (prefect-dask) or Ray (prefect-ray).

``orchestration.task_runner`` picks one; :class:`TaskRunnerMapper` submits each unit of a fan-out (a scene to map, a
fold, an ingest or prediction shard) as a Prefect task with retries, so units show up as task runs of the flow and
a unit whose worker died is run again.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any, TypeVar
from urllib.parse import urlparse

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from geocnn.config import OrchestrationConfig
from geocnn.errors import GeocnnError
from geocnn.fanout import SEQUENTIAL, Mapper

T = TypeVar("T")
R = TypeVar("R")
LOG = logging.getLogger("geocnn")
CONNECT_TIMEOUT_S = 10.0


def _call(unit: Callable[[Any], Any], item: Any) -> Any:
    """A unit applied to its item (the function every fan-out task runs)."""
    return unit(item)


def _reachable(address: str, what: str) -> None:
    """Fail fast, naming the setting, when nothing listens at a cluster's host:port."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        return  # e.g. ray 'auto': the library resolves it
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise GeocnnError(f"orchestration.address {address}: no {what} answers there ({exc.strerror or exc}). Start "
                          f"the {what}, fix orchestration.address, or set orchestration.address: null for a local "
                          "cluster (orchestration.task_runner: sequential runs without one).") from None


def threads_env(slots: int) -> dict[str, str]:
    """Torch/OpenMP threads per unit on a local cluster: the cores shared by the units running at once (units that
    each took every core would fight over them)."""
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // max(1, slots)))}


def build_task_runner(orch: OrchestrationConfig) -> TaskRunner:
    """The Prefect task runner of ``orch`` (not started)."""
    workers = orch.workers or os.cpu_count() or 1
    if orch.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if orch.task_runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise GeocnnError("orchestration.task_runner: dask needs prefect-dask; pip install 'geocnn[scale]'"
                              ) from None
        if orch.address:
            _reachable(orch.address, "Dask scheduler")
            return DaskTaskRunner(address=orch.address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": orch.threads_per_worker,
                                              "processes": True, "dashboard_address": ":0", "silence_logs": 40,
                                              "env": threads_env(workers * orch.threads_per_worker)})
    if orch.task_runner == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise GeocnnError("orchestration.task_runner: ray needs prefect-ray; pip install 'geocnn[scale]'") from None
        if orch.address and orch.address != "auto":
            _reachable(orch.address, "Ray cluster")
        init = {} if orch.address else {"num_cpus": workers, "include_dashboard": False, "log_to_driver": False,
                                        "runtime_env": {"env_vars": threads_env(workers)}}
        return RayTaskRunner(address=orch.address, init_kwargs=init)
    return ThreadPoolTaskRunner(max_workers=1)


def api_url() -> str:
    """The Prefect API the workers report to: PREFECT_API_URL, else this process's temporary server."""
    url = PREFECT_API_URL.value()
    if url:
        return url
    server = SubprocessASGIServer()
    server.start()
    return server.api_url


class TaskRunnerMapper:
    """A Mapper submitting units as Prefect tasks to a started task runner (use as a context manager)."""

    def __init__(self, orch: OrchestrationConfig) -> None:
        self.orch = orch
        self.parallel = orch.task_runner != "sequential"
        self._stack = ExitStack()
        self._runner: TaskRunner | None = None

    def __enter__(self) -> "TaskRunnerMapper":
        if not self.parallel:
            return self
        os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
        # Workers in other processes must report to the same API: the settings context travels with each task.
        self._stack.enter_context(temporary_settings({PREFECT_API_URL: api_url()}))
        runner = build_task_runner(self.orch)
        started = time.perf_counter()
        try:
            self._runner = self._stack.enter_context(runner)
        except GeocnnError:
            self._stack.close()
            raise
        except Exception as exc:  # noqa: BLE001 - the engines raise many kinds on a bad address
            self._stack.close()
            where = f"orchestration.address {self.orch.address}" if self.orch.address else "a local cluster"
            raise GeocnnError(f"orchestration.task_runner {self.orch.task_runner}: could not start or reach {where} "
                              f"({type(exc).__name__}: {exc}). Fix orchestration.address, or use "
                              "orchestration.task_runner: sequential.") from None
        LOG.info("task runner %s ready in %.1f s", self.orch.task_runner, time.perf_counter() - started)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self._runner = None

    def map(self, name: str, unit: Callable[[T], R], items: Sequence[T]) -> list[R]:
        if not self.parallel or len(items) <= 1 or self._runner is None:
            return SEQUENTIAL.map(name, unit, items)
        job = task(_call, name=name, retries=self.orch.retries, retry_delay_seconds=1, cache_policy=NO_CACHE,
                   persist_result=False)
        futures = [self._runner.submit(job.with_options(task_run_name=f"{name}-{k}"), {"unit": unit, "item": item})
                   for k, item in enumerate(items)]
        return [f.result() for f in futures]


def mapper_for(orch: OrchestrationConfig) -> Mapper:
    """The Mapper of a config's orchestration section (enter it with ``with``)."""
    return TaskRunnerMapper(orch)
