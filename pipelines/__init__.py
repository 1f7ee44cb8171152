"""Prefect flows: compositions of geocnn's plain functions (no domain logic here)."""

import geocnn.serving  # noqa: F401 - Prefect's settings defaults, set before Prefect is imported
