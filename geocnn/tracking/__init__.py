"""MLflow tracking: runs, logged and registered models, model URIs (the only package that talks to MLflow)."""

import os

# No "Downloading artifacts" progress bars when a model is resolved or a table fetched (a user's value wins).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
