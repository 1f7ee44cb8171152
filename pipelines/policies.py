"""Task policies: I/O retries with exponential backoff (never for bad input), ingest cached by input content."""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff

from geocnn.domains import domain_for
from geocnn.errors import GeocnnError


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures (disks, network filesystems, servers), not bad input: that fails the same again."""
    try:
        state.result()
    except GeocnnError:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return True


IO_RETRIES: dict[str, Any] = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2),
                              "retry_jitter_factor": 0.5, "retry_condition_fn": retry_unless_user_error}
"""Task options for I/O steps: 3 retries after about 2, 4 and 8 seconds."""


def ingest_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Cache key of an ingest task: the content of its input files and the settings that shape the chips."""
    cfg = parameters["cfg"]
    return "geocnn-ingest-" + domain_for(cfg).ingest_key(cfg)


CACHED_INGEST: dict[str, Any] = {"cache_key_fn": ingest_cache_key, "persist_result": True, **IO_RETRIES}
"""Task options for ingest: unchanged inputs are not read again across runs; I/O failures are retried."""


def cached_store(ingest: Any, cfg: Any, **kwargs: Any) -> Any:
    """Run a cached ingest task; if the cached store was deleted since, rebuild it (refreshing the cache)."""
    store = ingest(cfg, **kwargs)
    if not (store.root / "meta.json").exists():
        store = ingest.with_options(refresh_cache=True)(cfg, **kwargs)
    return store
