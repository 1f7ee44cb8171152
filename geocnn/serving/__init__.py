"""Unattended runs: schedules and the local Prefect server, watch folders, batch prediction.

Prefect reads its settings when it is imported, so the defaults geocnn needs are set here, before any module of
geocnn imports it (a user's own value always wins).
"""

import os

# Prefect's temporary local server sends a telemetry heartbeat that races its own SQLite database
# ("database is locked" tracebacks); runs here are offline anyway.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The temporary per-run API server (no PREFECT_API_URL) needs more than Prefect's default start-up wait (20 s) on
# a busy machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# Persisted task results (the ingest cache) live in the project's data folder beside the stores they point at,
# not in ~/.prefect shared by every checkout.
os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", os.path.abspath(os.path.join("data", "prefect", "results")))
