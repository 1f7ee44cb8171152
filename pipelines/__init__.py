"""Prefect flows: compositions of geocnn's plain functions (no domain logic here)."""
