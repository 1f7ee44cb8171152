"""Inputs and outputs on a real S3-compatible server (moto, started on 127.0.0.1) and over HTTPS-style URLs (a local
HTTP server with range requests): ingest, maps, prediction tables and MLflow artifacts round-trip identical; a
missing bucket and refused credentials give clear errors and leave nothing behind."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
import rasterio
from typer.testing import CliRunner

from geocnn.cli import app
from geocnn.data.catalog import Catalog
from geocnn.data.chips import ChipSpec
from geocnn.data.sources.raster import open_scene
from geocnn.data.sources.survey import read_survey
from geocnn.data.sources.uris import fingerprint, read_bytes
from geocnn.data.store import build_store
from geocnn.errors import GeocnnError
from geocnn.outputs.remote import SUCCESS, output_dir
from geocnn.synthetic.earth import BANDS, make_scene
from tests.helpers import write_bundle

pytestmark = pytest.mark.slow

BUCKET = "geocnn-test"
CHIP = 16
RANGED_HTTP = """
import functools, http.server, io, os, re, sys
class Ranged(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass
    def send_head(self):
        path = self.translate_path(self.path)
        m = re.match(r"bytes=(\\d+)-(\\d*)", self.headers.get("Range", ""))
        if not m or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])),
                                functools.partial(Ranged, directory=sys.argv[2])).serve_forever()
"""
"""A static file server with byte ranges (GDAL's /vsicurl/ reads windows); run in its own process, since GDAL
holds the GIL while it opens a file and an in-process server would never answer."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(cmd: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server {cmd[0]} did not start on port {port}")


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """A moto S3 server in its own process, the environment pointing at it (AWS SDK, GDAL, MLflow), one bucket."""
    port = free_port()
    proc = serve([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)], port)
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                           "AWS_S3_ENDPOINT": f"127.0.0.1:{port}", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
                           "MLFLOW_S3_ENDPOINT_URL": endpoint}.items():
            mp.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        try:
            yield endpoint
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.fixture(scope="module")
def earth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_scene(tmp_path_factory.mktemp("earth"), size_px=256, n_clusters=12, seed=3)


def keys(prefix: str) -> list[str]:
    listed = boto3.session.Session().client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def upload(local: Path, key: str) -> str:
    boto3.client("s3").upload_file(str(local), BUCKET, key)
    return f"s3://{BUCKET}/{key}"


def test_ingest_from_s3_gives_the_chips_of_the_local_copy(s3: str, earth: dict[str, Path], tmp_path: Path) -> None:
    scene = upload(earth["scene"], "in/scene.tif")
    survey = upload(earth["clusters"], "in/clusters.csv")
    remote_points = read_survey(survey, targets=["wealth"], id_column="cluster_id")
    local_points = read_survey(earth["clusters"], targets=["wealth"], id_column="cluster_id")
    pd.testing.assert_frame_equal(remote_points, local_points)
    stores = {}
    for where, path, points in (("remote", scene, remote_points), ("local", str(earth["scene"]), local_points)):
        spec = ChipSpec(out_px=CHIP, files=False, scenes=[path], chip_px=CHIP)
        stores[where] = build_store(Catalog(points, ["wealth"], where), spec, tmp_path / where, progress=False)
    remote, local = np.asarray(stores["remote"].chips), np.asarray(stores["local"].chips)
    assert remote.shape == local.shape == (12, len(BANDS), CHIP, CHIP)
    np.testing.assert_array_equal(remote, local)
    assert np.isfinite(remote).mean() > 0.5  # real pixels, not an all-nodata read
    # the cache key follows the object's content: same object -> same store; a new upload -> a new key
    before = fingerprint(scene)
    assert fingerprint(scene) == before
    upload(earth["nightlights"], "in/scene.tif")
    assert fingerprint(scene) != before


def test_map_and_predictions_written_to_s3_read_back_identical(s3: str, earth: dict[str, Path],
                                                                tmp_path: Path) -> None:
    scene = upload(earth["scene"], "in/map_scene.tif")
    with rasterio.open(earth["scene"]) as src:
        stack = src.read(masked=True).astype(float)
    chips = ChipSpec(out_px=CHIP, files=False, scenes=[str(earth["scene"])], chip_px=CHIP, max_nodata_fraction=0.5)
    bundle = write_bundle(tmp_path / "bundle", chips, BANDS, domain="earth", task="regression", targets=("wealth",),
                          mean=[float(b.mean()) for b in stack], std=[float(b.std()) for b in stack], dtype="float32")
    runner = CliRunner()
    base = ["--model", str(bundle), "--device", "cpu"]
    for out, sc in ((f"s3://{BUCKET}/maps/run1", scene), (str(tmp_path / "map"), str(earth["scene"]))):
        result = runner.invoke(app, ["map", *base, "--out", out, "--scene", sc, "--stride", str(CHIP)])
        assert result.exit_code == 0, result.output
    local_files = sorted(p.name for p in (tmp_path / "map").iterdir())
    assert keys("maps/run1/") == sorted([f"maps/run1/{n}" for n in local_files] + [f"maps/run1/{SUCCESS}"])
    with rasterio.open(f"s3://{BUCKET}/maps/run1/prediction.tif") as a, rasterio.open(tmp_path / "map" /
                                                                                     "prediction.tif") as b:
        remote_map, local_map = a.read(1), b.read(1)
        # provenance tags name the scene read (an s3:// URI vs a path) and the time: the rest must agree
        drop = ("DATA", "CREATED")
        assert {k: v for k, v in a.tags().items() if k not in drop} == \
            {k: v for k, v in b.tags().items() if k not in drop}
    np.testing.assert_array_equal(remote_map, local_map)
    assert np.nanstd(local_map) > 0  # a real map
    for name in [n for n in local_files if not n.endswith(".tif")]:
        assert read_bytes(f"s3://{BUCKET}/maps/run1/{name}") == (tmp_path / "map" / name).read_bytes(), name

    points = earth["clusters"]
    for out in (f"s3://{BUCKET}/preds/table.parquet", str(tmp_path / "table.parquet")):
        result = runner.invoke(app, ["predict", *base, "--catalog", str(points), "--id-column", "cluster_id",
                                     "--scene", scene, "--out", out])
        assert result.exit_code == 0, result.output
    remote_table = pd.read_parquet(pd.io.common.BytesIO(read_bytes(f"s3://{BUCKET}/preds/table.parquet")))
    local_table = pd.read_parquet(tmp_path / "table.parquet")
    pd.testing.assert_frame_equal(remote_table, local_table)
    assert len(local_table) == 12 and local_table["pred_wealth"].std() > 0


def test_mlflow_artifacts_go_to_s3_and_come_back_identical(s3: str, tmp_path: Path) -> None:
    import mlflow

    from geocnn.config import load_config
    from geocnn.tracking.runs import end_run, log_artifacts, start_run

    cfg = load_config(None, ["name=s3run", "tracking.experiment=s3-artifacts",
                             f"tracking.artifact_location=s3://{BUCKET}/mlflow"])
    run_id = start_run(cfg)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"r2": 0.5, "values": list(range(100))}))
    log_artifacts(run_id, [report], "reports")
    end_run(run_id)
    run = mlflow.get_run(run_id)
    assert run.info.artifact_uri.startswith(f"s3://{BUCKET}/mlflow/")
    stored = keys("mlflow/")
    assert any(k.endswith("/artifacts/reports/report.json") for k in stored)
    assert any(k.endswith("/artifacts/config.yaml") for k in stored)
    back = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="reports/report.json",
                                                    dst_path=str(tmp_path / "down")))
    assert back.read_bytes() == report.read_bytes()
    # an experiment's artifact root cannot move: asking for another one is a clear error
    other = load_config(None, ["name=s3run", "tracking.experiment=s3-artifacts",
                               f"tracking.artifact_location=s3://{BUCKET}/elsewhere"])
    with pytest.raises(GeocnnError, match="tracking.artifact_location"):
        start_run(other)


def test_a_missing_bucket_is_named_and_nothing_is_created(s3: str, earth: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(GeocnnError, match="bucket 'no-such-bucket' does not exist.*AWS_ENDPOINT_URL"):
        read_survey("s3://no-such-bucket/clusters.csv", targets=["wealth"])
    with pytest.raises(GeocnnError, match="s3://no-such-bucket/scene.tif.*bucket 'no-such-bucket' does not exist"):
        build_store(Catalog(read_survey(earth["clusters"], targets=["wealth"]), ["wealth"], "c"),
                    ChipSpec(out_px=CHIP, files=False, scenes=["s3://no-such-bucket/scene.tif"], chip_px=CHIP),
                    tmp_path / "store", progress=False)
    with pytest.raises(GeocnnError, match="no-such-bucket.*does not exist"):
        with output_dir("s3://no-such-bucket/maps") as local:
            (local / "prediction.tif").write_bytes(b"x" * 100)
    names = [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
    assert "no-such-bucket" not in names and BUCKET in names


def test_a_failed_upload_removes_what_it_had_uploaded(s3: str, tmp_path: Path) -> None:
    with pytest.raises(GeocnnError, match="vanished"):
        with output_dir(f"s3://{BUCKET}/partial") as local:
            (local / "a.txt").write_text("first")
            (local / "b.txt").symlink_to(local / "missing")  # the second file cannot be read
    assert keys("partial/") == []
    with output_dir(f"s3://{BUCKET}/whole") as local:
        (local / "a.txt").write_text("first")
        (local / "sub").mkdir()
        (local / "sub" / "b.txt").write_text("second")
    assert keys("whole/") == ["whole/_SUCCESS", "whole/a.txt", "whole/sub/b.txt"]
    assert read_bytes(f"s3://{BUCKET}/whole/sub/b.txt") == b"second"


def set_auth(endpoint: str, after: str) -> None:
    """Make moto check credentials after this many more requests ("inf": never)."""
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=after.encode(),
                                                  headers={"Content-Type": "text/plain"}, method="POST"))


def test_refused_credentials_name_the_setting_and_leave_nothing(s3: str, earth: dict[str, Path],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    iam = boto3.client("iam")
    iam.create_user(UserName="writer")
    iam.put_user_policy(UserName="writer", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    good = iam.create_access_key(UserName="writer")["AccessKey"]
    upload(earth["clusters"], "secure/clusters.csv")
    set_auth(s3, "0")  # from now on moto checks every request's keys against its IAM users
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        with pytest.raises(GeocnnError, match="s3://geocnn-test/secure/clusters.csv: access refused.*"
                                              "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"):
            read_survey(f"s3://{BUCKET}/secure/clusters.csv", targets=["wealth"])
        with pytest.raises(GeocnnError, match="s3://geocnn-test/secure/scene.tif.*access refused.*AWS_ACCESS_KEY_ID"):
            open_scene(f"s3://{BUCKET}/secure/scene.tif")
        with pytest.raises(GeocnnError, match="s3://geocnn-test/secure/out.*access refused.*AWS_ACCESS_KEY_ID"):
            with output_dir(f"s3://{BUCKET}/secure/out") as local:
                (local / "prediction.tif").write_bytes(b"x" * 100)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", good["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", good["SecretAccessKey"])
        assert keys("secure/") == ["secure/clusters.csv"]  # nothing of the refused output is there
        assert len(read_survey(f"s3://{BUCKET}/secure/clusters.csv", targets=["wealth"])) == 12
    finally:
        set_auth(s3, "inf")


def test_rasters_and_tables_over_http(earth: dict[str, Path], tmp_path: Path) -> None:
    port = free_port()
    proc = serve([sys.executable, "-c", RANGED_HTTP, str(port), str(earth["scene"].parent)], port)
    try:
        base = f"http://127.0.0.1:{port}"
        points = read_survey(f"{base}/clusters.csv", targets=["wealth"], id_column="cluster_id")
        pd.testing.assert_frame_equal(points, read_survey(earth["clusters"], targets=["wealth"],
                                                          id_column="cluster_id"))
        chips = {}
        for where, scene in (("http", f"{base}/scene.tif"), ("local", str(earth["scene"]))):
            spec = ChipSpec(out_px=CHIP, files=False, scenes=[scene], chip_px=CHIP)
            chips[where] = np.asarray(build_store(Catalog(points, ["wealth"], where), spec, tmp_path / where,
                                                  progress=False).chips)
        np.testing.assert_array_equal(chips["http"], chips["local"])
        with pytest.raises(GeocnnError, match=f"{base}/missing.csv: no such object"):
            read_survey(f"{base}/missing.csv", targets=["wealth"])
        (earth["scene"].parent / "broken.geojson").write_text('{"type": "FeatureCollection"')
        with pytest.raises(GeocnnError, match=f"^{base}/broken.geojson: not valid GeoJSON"):  # the URI, not a copy
            read_survey(f"{base}/broken.geojson")
    finally:
        proc.terminate()
        proc.wait(10)
