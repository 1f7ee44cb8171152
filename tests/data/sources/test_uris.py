"""URIs without a server: what is remote, joins that stay in the bucket, GDAL paths, the endpoint settings derived
from AWS_ENDPOINT_URL, and errors that name the URI and the setting to change."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from geocnn.data.sources.uris import (
    configure_endpoints,
    gdal_path,
    is_uri,
    join,
    path_exists,
    read_bytes,
    s3_endpoint,
    storage_error,
    storage_options,
)
from geocnn.errors import GeocnnError
from geocnn.outputs.remote import output_dir, output_file

ENDPOINT_SETTINGS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL",
                     "AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No endpoint settings; whatever a test (or configure_endpoints) sets is removed afterwards."""
    for var in ENDPOINT_SETTINGS:
        monkeypatch.setenv(var, "x")  # recorded, so the teardown restores the original state (set or not)
        monkeypatch.delenv(var)
    return monkeypatch


def client_error(code: str, status: int, message: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def test_remote_uris_are_told_from_local_paths() -> None:
    for uri in ("s3://b/k.tif", "gs://b/k.csv", "GCS://b/k", "https://host/a.tif", "http://127.0.0.1:9/x"):
        assert is_uri(uri), uri
    for path in ("/data/x.tif", "data/s3:/x", Path("/tmp/a.csv"), "file:///tmp/a.csv", "/vsis3/b/k.tif", "C:\\x"):
        assert not is_uri(path), path


def test_join_resolves_dots_and_never_leaves_the_bucket() -> None:
    assert join("s3://b/runs/1", "maps/p.tif") == "s3://b/runs/1/maps/p.tif"
    assert join("s3://b/runs/1/", "../2/x") == "s3://b/runs/2/x"
    assert join("s3://b/runs", "../../../etc/passwd") == "s3://b/etc/passwd"


def test_gdal_paths_of_uris(clean_env: pytest.MonkeyPatch) -> None:
    assert gdal_path("s3://bucket/a/scene.tif") == "/vsis3/bucket/a/scene.tif"
    assert gdal_path("gs://bucket/scene.tif") == "/vsigs/bucket/scene.tif"
    assert gdal_path("https://host/data/scene.tif?sig=1") == "/vsicurl/https://host/data/scene.tif?sig=1"
    assert gdal_path("/vsis3/bucket/k.tif") == "/vsis3/bucket/k.tif"


def test_one_endpoint_setting_configures_fsspec_gdal_and_mlflow(clean_env: pytest.MonkeyPatch) -> None:
    assert s3_endpoint() is None
    assert "endpoint_url" not in storage_options("s3://b/k")
    clean_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000/")
    assert s3_endpoint() == "http://127.0.0.1:9000"
    assert storage_options("s3://b/k")["endpoint_url"] == "http://127.0.0.1:9000"
    assert storage_options("https://host/x") == {}
    configure_endpoints()
    import os

    assert os.environ["AWS_S3_ENDPOINT"] == "127.0.0.1:9000"
    assert os.environ["AWS_HTTPS"] == "NO"
    assert os.environ["AWS_VIRTUAL_HOSTING"] == "FALSE"
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:9000"


def test_settings_already_made_are_kept(clean_env: pytest.MonkeyPatch) -> None:
    import os

    clean_env.setenv("AWS_ENDPOINT_URL", "https://minio.example.org")
    clean_env.setenv("AWS_VIRTUAL_HOSTING", "TRUE")
    configure_endpoints()
    assert os.environ["AWS_VIRTUAL_HOSTING"] == "TRUE"
    assert os.environ["AWS_HTTPS"] == "YES"
    # GDAL's own settings alone also give the endpoint (for fsspec and MLflow)
    for var in ENDPOINT_SETTINGS:
        clean_env.delenv(var, raising=False)
    clean_env.setenv("AWS_S3_ENDPOINT", "127.0.0.1:9000")
    clean_env.setenv("AWS_HTTPS", "NO")
    assert s3_endpoint() == "http://127.0.0.1:9000"


def test_credentials_come_from_the_environment_so_a_change_gets_a_new_client(
        clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_ACCESS_KEY_ID", "one")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "s1")
    first = storage_options("s3://b/k")
    clean_env.setenv("AWS_ACCESS_KEY_ID", "two")
    assert first["key"] == "one" and storage_options("s3://b/k")["key"] == "two"


@pytest.mark.parametrize(("exc", "expected"), [
    (client_error("NoSuchBucket", 404, "The specified bucket does not exist"),
     r"s3://missing/k.csv: the bucket 'missing' does not exist.*aws s3 mb s3://missing.*AWS_ENDPOINT_URL"),
    (client_error("InvalidAccessKeyId", 403, "The AWS Access Key Id you provided does not exist in our records."),
     r"s3://missing/k.csv: access refused.*AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"),
    (client_error("AccessDenied", 403, "Access Denied"), r"access refused.*AWS_ACCESS_KEY_ID"),
    (PermissionError("Forbidden"), r"access refused.*AWS_ACCESS_KEY_ID"),
    (OSError("Could not connect to the endpoint URL: http://127.0.0.1:1/missing"),
     r"cannot reach the storage server.*AWS_ENDPOINT_URL"),
    (FileNotFoundError("k.csv"), r"s3://missing/k.csv: no such object"),
])
def test_storage_errors_name_the_uri_and_the_setting(exc: BaseException, expected: str,
                                                     clean_env: pytest.MonkeyPatch) -> None:
    assert isinstance(storage_error(exc, "s3://missing/k.csv"), GeocnnError)
    with pytest.raises(GeocnnError, match=expected):
        raise storage_error(exc, "s3://missing/k.csv")


def test_a_chained_error_is_classified_by_its_cause() -> None:
    try:
        try:
            raise client_error("NoSuchBucket", 404, "The specified bucket does not exist")
        except ClientError as inner:
            raise OSError("wrapped") from inner
    except OSError as exc:
        err = storage_error(exc, "s3://gone/x")
    assert "bucket 'gone' does not exist" in str(err)


def test_gs_and_http_errors_name_their_own_settings() -> None:
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(storage_error(PermissionError("403"), "gs://b/k"))
    assert "GDAL_HTTP_HEADERS" in str(storage_error(PermissionError("403"), "https://h/k.tif"))


def test_an_unreachable_http_server_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    with pytest.raises(GeocnnError, match=f"http://127.0.0.1:{port}/t.csv: cannot reach the storage server"):
        read_bytes(f"http://127.0.0.1:{port}/t.csv")


def test_local_paths_pass_through(tmp_path: Path) -> None:
    assert path_exists(tmp_path) and not path_exists(tmp_path / "nope") and path_exists("/vsis3/b/k.tif")
    with output_dir(tmp_path / "out") as local:
        assert local == tmp_path / "out"
    with output_file(tmp_path / "t.csv") as local:
        assert local == tmp_path / "t.csv"

