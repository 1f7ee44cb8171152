"""Safety: catalog paths stay inside the data root, servers bind to loopback, concurrent watch runs stay exact."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from geocnn.config import load_config
from geocnn.data.sources.galaxy_tables import read_galaxy_catalog
from geocnn.errors import GeocnnError
from geocnn.models.tasks import task_spec
from tests.conftest import write_rgb


def catalog_with(tmp_path: Path, file_value: str) -> Path:
    data = tmp_path / "data"
    for i in range(3):
        write_rgb(data / f"g{i}.png", size=16, seed=i)
    rows = [{"id": f"g{i}", "file": f"g{i}.png", "y": float(i)} for i in range(3)]
    rows[1]["file"] = file_value
    pd.DataFrame(rows).to_csv(data / "catalog.csv", index=False)
    return data / "catalog.csv"


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_catalog_paths_cannot_leave_the_data_root(tmp_path: Path, kind: str) -> None:
    secret = write_rgb(tmp_path / "elsewhere" / "secret.png", size=16)
    if kind == "symlink":
        catalog = catalog_with(tmp_path, "link.png")
        os.symlink(secret, catalog.parent / "link.png")
    else:
        catalog = catalog_with(tmp_path, "../elsewhere/secret.png" if kind == "dotdot" else str(secret))
    cfg = load_config(overrides=["data.format=csv", f"data.catalog={catalog}", "data.targets=[y]"])
    with pytest.raises(GeocnnError, match=r"row 3 \(id 'g1'\).*outside the data root.*allow_outside_root"):
        task_spec("regression").prepare(read_galaxy_catalog(cfg.data))
    allowed = load_config(overrides=["data.format=csv", f"data.catalog={catalog}", "data.targets=[y]",
                                     "data.allow_outside_root=true"])
    cat = task_spec("regression").prepare(read_galaxy_catalog(allowed.data))
    assert len(cat.frame) == 3


def test_servers_bind_to_loopback_by_default() -> None:
    import inspect

    from geocnn.serving import schedules as serving
    from geocnn.tracking.runs import server_command, ui_command

    cmd = server_command()
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert "--host 127.0.0.1" in ui_command("sqlite:///x.db")
    source = inspect.getsource(serving.prefect_api)
    assert '"--host", "127.0.0.1"' in source and "0.0.0.0" not in source
    from geocnn.cli import tracking_server

    assert inspect.signature(tracking_server).parameters["host"].default == "127.0.0.1"


@pytest.mark.slow
def test_two_concurrent_watch_runs_process_each_file_once(tmp_path: Path) -> None:
    from geocnn.serving.watch import Ledger
    from tests.serving.test_watch import drop, galaxy_bundle

    model = galaxy_bundle(tmp_path / "bundle")
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    names = [f"g{i:02d}.png" for i in range(40)]
    drop(inbox, names)
    cmd = [sys.executable, "-m", "geocnn.cli", "watch", "--no-prefect", "--input", str(inbox), "--output", str(out),
           "--model", str(model), "--set", "schedule.min_age_s=0"]
    env = dict(os.environ)
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    ledger = Ledger(out)
    items = ledger.items()
    batches = ledger.batches()
    ledger.close()
    assert sorted(i["path"] for i in items) == names and all(i["status"] == "done" for i in items)
    assert len(batches) == 1  # one run did the work; the other saw the lock (or nothing left) and wrote nothing
    table = pd.read_parquet(out / "predictions.parquet")
    assert sorted(table["id"]) == [Path(n).stem for n in names] and table["id"].is_unique
    # and a third run afterwards finds nothing new
    third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0
    assert pd.read_parquet(out / "predictions.parquet").shape == table.shape
