"""Watch-folder prediction: new files once each, failures retried, orphans cleaned, one run at a time, maps of scenes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from geocnn.data.chips import ChipSource, ChipSpec
from geocnn.domains.earth_maps import map_scene
from geocnn.inference.bundle import load_bundle
from geocnn.inference.predict import Forward
from geocnn.serving.batch import predict_new
from geocnn.serving.watch import BATCHES, Ledger, exclusive
from geocnn.synthetic.earth import make_scene
from tests.conftest import write_rgb
from tests.helpers import write_bundle

CLASSES = ["elliptical", "spiral", "edge_on"]


def galaxy_bundle(path: Path) -> Path:
    """A small untrained classifier bundle (the predictions are checked against direct prediction, not truth)."""
    return write_bundle(path, ChipSpec(out_px=32, crop=48), ["red", "green", "blue"], classes=tuple(CLASSES),
                        tta_views=2, mean=120.0, std=60.0)


def drop(inbox: Path, names: list[str], seed: int = 0) -> list[Path]:
    """Write small RGB images (older than any min_age)."""
    return [write_rgb(inbox / n, size=56, seed=seed + i) for i, n in enumerate(names)]


def run(inbox: Path, out: Path, model: Path, **kw: object) -> dict:
    return predict_new(inbox, out, str(model), min_age_s=0, log=lambda _: None, **kw)


def test_new_images_are_predicted_once_and_bad_files_retried(tmp_path: Path) -> None:
    model = galaxy_bundle(tmp_path / "bundle")
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    good = drop(inbox, ["a.png", "b.jpg", "sub/c.png"])
    (inbox / "broken.png").write_bytes(b"not an image")
    (inbox / "notes.txt").write_text("ignored: not an image pattern")

    first = run(inbox, out, model)
    assert (first["n_new"], first["n_done"], first["n_failed"]) == (4, 3, 1)
    assert "broken.png" in first["failures"] and "corrupt or not an image" in first["failures"]["broken.png"]
    table = pd.read_parquet(out / "predictions.parquet")
    assert sorted(table["id"]) == ["a", "b", "sub/c"]
    # values: the same as predicting the files directly with the bundle (same preprocessing, same TTA)
    bundle = load_bundle(model)
    with ChipSource(bundle.preprocessing.chips) as src:
        chips = np.stack([src.make({"id": p.name, "image": str(p)})[0].pixels for p in good])
    direct = Forward(bundle.net, bundle.tta_views)(chips)
    got = table.set_index("id").loc[["a", "b", "sub/c"], [f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(got, direct, atol=1e-5)
    assert pd.read_csv(out / "predictions.csv")["id"].tolist() == table["id"].tolist()

    # nothing new: only the failed file is tried again, nothing is predicted twice
    second = run(inbox, out, model)
    assert (second["n_new"], second["n_done"], second["n_failed"]) == (1, 0, 1)
    # the file is fixed and two more arrive: exactly those three are processed
    write_rgb(inbox / "broken.png", size=56, seed=9)
    drop(inbox, ["d.png", "e.png"], seed=20)
    third = run(inbox, out, model)
    assert (third["n_new"], third["n_done"], third["n_failed"]) == (3, 3, 0)
    table = pd.read_parquet(out / "predictions.parquet")
    assert sorted(table["id"]) == ["a", "b", "broken", "d", "e", "sub/c"]
    assert table["id"].is_unique
    ledger = Ledger(out)
    items = {i["path"]: i for i in ledger.items()}
    assert all(i["status"] == "done" for i in items.values()) and len(items) == 6
    assert len({items[p]["batch"] for p in ("a.png", "d.png")}) == 2  # different runs
    ledger.close()
    # a changed file (new content) is predicted again; the table keeps its newest row only
    write_rgb(inbox / "a.png", size=56, value=200)
    fourth = run(inbox, out, model)
    assert (fourth["n_new"], fourth["n_done"]) == (1, 1)
    table = pd.read_parquet(out / "predictions.parquet").set_index("id")
    assert len(table) == 6 and table.loc["a", "batch"] == fourth["batch"]


def test_failing_file_is_given_up_after_max_attempts(tmp_path: Path) -> None:
    model = galaxy_bundle(tmp_path / "bundle")
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    drop(inbox, ["ok.png"])
    (inbox / "bad.fits").write_bytes(b"SIMPLE  = garbage")
    counts = [run(inbox, out, model, max_attempts=2)["n_failed"] for _ in range(3)]
    assert counts == [1, 1, 0]
    last = run(inbox, out, model, max_attempts=2)
    assert last["given_up"] == ["bad.fits"] and last["n_new"] == 0


def test_outputs_of_an_unrecorded_run_are_removed_and_redone(tmp_path: Path) -> None:
    model = galaxy_bundle(tmp_path / "bundle")
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    drop(inbox, ["a.png", "b.png"])
    run(inbox, out, model)
    # a run that wrote its batch table and was killed before recording it in the ledger
    orphan = out / BATCHES / "20990101T000000-dead00.parquet"
    shutil.copy(next((out / BATCHES).glob("*.parquet")), orphan)
    drop(inbox, ["c.png"], seed=5)
    summary = run(inbox, out, model)
    assert not orphan.exists()
    assert summary["n_done"] == 1
    table = pd.read_parquet(out / "predictions.parquet")
    assert sorted(table["id"]) == ["a", "b", "c"]


def test_second_concurrent_run_skips(tmp_path: Path) -> None:
    model = galaxy_bundle(tmp_path / "bundle")
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    drop(inbox, ["a.png"])
    with exclusive(out) as mine:
        assert mine
        assert run(inbox, out, model)["skipped"] is True
    assert run(inbox, out, model)["n_done"] == 1


def test_files_still_being_written_wait(tmp_path: Path) -> None:
    model = galaxy_bundle(tmp_path / "bundle")
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    drop(inbox, ["fresh.png"])
    summary = predict_new(inbox, out, str(model), min_age_s=3600, log=lambda _: None)
    assert summary["n_new"] == 0


def test_missing_watch_folder_is_a_clear_error(tmp_path: Path) -> None:
    from geocnn.errors import GeocnnError

    model = galaxy_bundle(tmp_path / "bundle")
    with pytest.raises(GeocnnError, match="watch folder .*does not exist"):
        run(tmp_path / "nope", tmp_path / "out", model)


def test_new_scenes_are_mapped_and_a_corrupt_one_fails_alone(tmp_path: Path) -> None:
    paths = make_scene(tmp_path / "scene", size_px=256, n_clusters=20, seed=1)
    with rasterio.open(paths["scene"]) as src:
        bands = list(src.descriptions)
    chips = ChipSpec(out_px=32, files=False, scenes=[str(paths["scene"])], chip_px=32, max_nodata_fraction=0.5)
    model = write_bundle(tmp_path / "bundle", chips, bands, domain="earth", task="regression", targets=("wealth",),
                         mean=0.1, std=0.05, dtype="float32")
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    shutil.copy(paths["scene"], inbox / "tile_a.tif")
    (inbox / "tile_bad.tif").write_bytes(b"II*\x00broken")
    summary = run(inbox, out, model, stride_px=32)
    assert (summary["n_done"], summary["n_failed"]) == (1, 1)
    assert "tile_bad.tif" in summary["failures"]
    table = pd.read_parquet(out / "predictions.parquet")
    assert table["id"].tolist() == ["tile_a"]
    direct = map_scene(load_bundle(model), [str(inbox / "tile_a.tif")], tmp_path / "direct", 32)
    with rasterio.open(table.loc[0, "map_tif"]) as a, rasterio.open(direct["map_tif"]) as b:
        assert a.crs == b.crs and a.transform == b.transform
        va, vb = a.read(1), b.read(1)
    np.testing.assert_allclose(va, vb, equal_nan=True)
    assert np.isfinite(va).mean() > 0.5
    assert table.loc[0, "mean"] == pytest.approx(float(np.nanmean(va.astype(np.float64))), rel=1e-9)
    assert Path(table.loc[0, "map_png"]).stat().st_size > 1000


def test_a_run_with_nothing_new_looks_at_the_folder_only(tmp_path: Path) -> None:
    """A schedule every minute must not resolve (download) the model when there is nothing to predict."""
    from geocnn.serving.batch import Steps
    from geocnn.tracking.model_uri import resolve

    model = galaxy_bundle(tmp_path / "bundle")
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    drop(inbox, ["a.png"])
    calls: list[str] = []

    def counting(ref: str):  # noqa: ANN202
        calls.append(ref)
        return resolve(ref)

    steps = Steps(resolve=counting)
    first = predict_new(inbox, out, str(model), min_age_s=0, steps=steps, log=lambda _: None)
    assert first["n_done"] == 1 and len(calls) == 1
    logged: list[str] = []
    second = predict_new(inbox, out, str(model), min_age_s=0, steps=steps, log=logged.append)
    assert second["n_new"] == 0 and len(calls) == 1  # not resolved again
    assert logged == [f"nothing new in {inbox}"]


@pytest.mark.slow
def test_geocnn_watch_through_prefect_reports_a_failed_file_and_exits_1(tmp_path: Path) -> None:
    import subprocess
    import sys

    model = galaxy_bundle(tmp_path / "bundle")
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    drop(inbox, ["a.png", "b.png"])
    (inbox / "broken.png").write_bytes(b"not an image")
    res = subprocess.run([sys.executable, "-m", "geocnn.cli", "watch", "--input", str(inbox), "--output", str(out),
                          "--model", str(model), "--set", "schedule.min_age_s=0"], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "predictions.parquet" in res.stdout
    warnings = [line for line in res.stderr.splitlines() if "WARNING" in line]
    assert any("broken.png failed" in line for line in warnings), res.stderr[-3000:]
    assert sorted(pd.read_parquet(out / "predictions.parquet")["id"]) == ["a", "b"]
