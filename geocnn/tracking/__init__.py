"""MLflow tracking: runs, logged and registered models, model URIs (the only package that talks to MLflow)."""

import logging
import os

# No "Downloading artifacts" progress bars when a model is resolved or a table fetched (a user's value wins).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# "Creating initial MLflow database tables..." on a new SQLite store: MLflow's housekeeping, not the user's news.
for _name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
    logging.getLogger(_name).setLevel(logging.WARNING)
