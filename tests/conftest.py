"""Shared fixtures: the real sample data folder, tiny generated images, an isolated MLflow store per test and a
Prefect home per test process (pytest-xdist workers run side by side)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Each xdist worker gets its own Prefect home (its temporary API server's SQLite database) before Prefect is
# imported (geocnn itself raises the temporary server's start-up timeout: geocnn/serving/__init__.py).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=f"geocnn-prefect-{_WORKER}-")
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = os.path.join(os.environ["PREFECT_HOME"], "storage")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from geocnn.config import DATA_ENV, shared_data_default  # noqa: E402

if _WORKER != "main":
    torch.set_num_threads(1)  # two workers on two cores: one thread each, not four threads fighting


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real published sample data (../shared/data or $GEOCNN_SHARED_DATA)."""
    root = Path(os.environ.get(DATA_ENV, shared_data_default()))
    if not (root / "README.md").exists():
        pytest.skip(f"real sample data not found at {root}; set {DATA_ENV}")
    return root


@pytest.fixture(autouse=True)
def _isolated_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test logs to its own SQLite MLflow store, never to the project's data/ folder."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("GEOCNN_MLFLOW_ARTIFACTS", str(tmp_path / "mlartifacts"))


def write_rgb(path: Path, size: int = 32, value: int | None = None, seed: int = 0) -> Path:
    """Write a small RGB image (PNG or JPEG by suffix) and return its path."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8) if value is None else np.full((size, size, 3), value,
                                                                                                np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path
