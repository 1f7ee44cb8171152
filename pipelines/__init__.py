"""Prefect flows: compositions of geocnn's plain functions (no domain logic here)."""

import os

# Prefect's temporary local server sends a telemetry heartbeat that races its own SQLite database
# ("database is locked" tracebacks); runs here are offline anyway. Set the variable to override.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
