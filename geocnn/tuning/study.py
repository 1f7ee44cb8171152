"""The Optuna study of a config: storage, sampler, pruner, the config's fingerprint, a lock, killed trials retried."""

from __future__ import annotations

import json
import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from geocnn.config import AnyExperiment, TuneConfig
from geocnn.errors import GeocnnError
from geocnn.training.resume import content_key

HEARTBEAT_S = 60
"""Running trials beat this often; one silent for GRACE_S is taken as dead (its machine went away) and retried."""
GRACE_S = 180
BUDGET_KEYS = ("n_trials", "timeout_min", "parallel", "storage", "refit")
"""Tune settings that may change between runs of one study (the budget and where it runs), not what it searches."""
DONE = (TrialState.COMPLETE, TrialState.PRUNED)

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def study_folder(cfg: AnyExperiment) -> Path:
    """Where a config's study keeps its SQLite file, lock, trials, plots and the chosen config."""
    return cfg.out / "tune"


def storage_url(cfg: AnyExperiment) -> str:
    """tune.storage, else SQLite at output_dir/tune/study.db."""
    if cfg.tune.storage:
        return cfg.tune.storage
    folder = study_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'study.db').resolve()}"


def is_local(url: str) -> bool:
    """A SQLite file: one machine's study (a killed run's trials can be retried at once, under the lock)."""
    return url.startswith("sqlite:")


def study_name(cfg: AnyExperiment) -> str:
    """tune.study_name, else the experiment's name."""
    return cfg.tune.study_name or cfg.name


def fingerprint(cfg: AnyExperiment) -> str:
    """A hash of everything a trial's score depends on (the config and search space, not the budget)."""
    tree = cfg.model_dump(mode="json")
    tree["tune"] = {k: v for k, v in tree["tune"].items() if k not in BUDGET_KEYS}
    for key in ("orchestration", "tracking", "schedule", "output_dir"):
        tree.pop(key, None)
    return content_key(tree)


def storage(url: str) -> RDBStorage:
    """The RDB storage at ``url`` with heartbeats (a trial whose worker died is failed and retried by the next
    worker that asks for a trial) and a patient SQLite lock (several local workers write to one file)."""
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}} if is_local(url) else {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental in Optuna (stable since 2.8)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds for a bad URL or an unreachable server
        raise GeocnnError(f"tune.storage {url}: cannot open the Optuna storage ({type(exc).__name__}: {exc}). Use a "
                          "SQLAlchemy database URL (sqlite:///path/study.db, postgresql://user@host/db), or leave "
                          "tune.storage unset for SQLite in output_dir/tune/.") from None


def sampler(tune: TuneConfig, seed: int) -> optuna.samplers.BaseSampler:
    """tune.sampler, seeded (workers and resumed runs pass different seeds, so they do not repeat each other)."""
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if tune.sampler == "grid":
        return optuna.samplers.GridSampler({d.key: d.labels for d in tune.dimensions}, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=tune.n_startup, constant_liar=True,
                                      multivariate=True)


def pruner(tune: TuneConfig, max_steps: int, enabled: bool = True) -> optuna.pruners.BasePruner:
    """tune.pruner over per-epoch steps (folds' epochs one after another: ``max_steps`` in all)."""
    if not enabled or tune.pruner == "none":
        return optuna.pruners.NopPruner()
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(max_steps, 1))
    return optuna.pruners.MedianPruner(n_startup_trials=tune.prune_after_trials,
                                       n_warmup_steps=tune.prune_after_epochs)


def open_study(cfg: AnyExperiment, url: str, direction: str, seed: int, max_steps: int,
               prunable: bool = True) -> optuna.Study:
    """Create the config's study in the storage, or load it to continue; a study made for another config or search
    space is refused (its trials' scores would not be comparable)."""
    study = optuna.create_study(storage=storage(url), study_name=study_name(cfg), direction=direction,  # type: ignore[arg-type]
                                sampler=sampler(cfg.tune, seed), pruner=pruner(cfg.tune, max_steps, prunable),
                                load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise GeocnnError(f"tune: study {study.study_name!r} in {url} was made to {study.direction.name.lower()} its "
                          f"metric, this config asks to {direction}; set tune.study_name to start a new study")
    made_for = study.user_attrs.get("geocnn.fingerprint")
    mine = fingerprint(cfg)
    if made_for is None:
        study.set_user_attr("geocnn.fingerprint", mine)
        study.set_user_attr("geocnn.space", {d.key: d.text() for d in cfg.tune.dimensions})
    elif made_for != mine:
        where = url.removeprefix("sqlite:///")
        raise GeocnnError(f"tune: study {study.study_name!r} in {where} was made for another config or search space "
                          "(its trials' scores are not comparable with this one's). Set tune.study_name to start a "
                          "new study beside it, or delete the study to start over.")
    return study


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state (complete, pruned, fail, running, waiting)."""
    out = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name.lower()] += 1
    return out


def retry_killed(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by a `geocnn tune` that was killed: marked FAIL and queued again with the same values
    (their fits resume from the last checkpoint of the same output folder). Call only under :func:`study_lock`."""
    retried = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"geocnn.retry_of": t.number}, skip_if_exists=False)
        retried.append(t.number)
    return retried


@contextmanager
def study_lock(folder: Path) -> Iterator[None]:
    """One `geocnn tune` per local study at a time: a second one is refused while the first is alive; a lock left
    by a killed one is taken over."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / "tune.lock"
    host = socket.gethostname()
    if lock.exists():
        try:
            held = json.loads(lock.read_text())
        except (OSError, ValueError):
            held = {}
        if held.get("host") == host and _alive(int(held.get("pid", -1))) and int(held.get("pid", -1)) != os.getpid():
            raise GeocnnError(f"tune: another `geocnn tune` (pid {held['pid']}) is running this study ({lock}); wait "
                              "for it, or stop it: the next run continues the study")
    lock.write_text(json.dumps({"host": host, "pid": os.getpid()}))
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
