"""Object-storage and HTTP URIs (s3://, gs://, https://): detection, fsspec access, GDAL paths and clear errors.

Tables, images and outputs go through fsspec (s3fs, gcsfs, HTTP); rasters through GDAL's virtual file systems
(``/vsis3/``, ``/vsigs/``, ``/vsicurl/``), which rasterio opens itself.

Pointing at an S3-compatible server (MinIO, Ceph, moto, ...): set ``AWS_ENDPOINT_URL`` (the AWS SDK's own setting,
e.g. ``http://127.0.0.1:9000``) with ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_DEFAULT_REGION``).
fsspec/s3fs and MLflow (boto3) read it; :func:`configure_endpoints` derives what GDAL and MLflow need from it
unless set already: ``AWS_S3_ENDPOINT`` (host:port), ``AWS_HTTPS=NO`` for http, ``AWS_VIRTUAL_HOSTING=FALSE``
(path-style addressing) and ``MLFLOW_S3_ENDPOINT_URL``. Public buckets: ``AWS_NO_SIGN_REQUEST=YES`` (GDAL) and
``anon``. Google Cloud Storage: ``GOOGLE_APPLICATION_CREDENTIALS`` and the ``gcsfs`` package.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import fsspec

from geocnn.errors import GeocnnError

REMOTE_SCHEMES = ("s3", "gs", "gcs", "http", "https")
"""URI schemes read through fsspec and GDAL's virtual file systems (anything else is a local path)."""
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
"""Environment variables naming an S3-compatible endpoint URL, first set wins."""
HASH_LIMIT = 256 * 2**20
"""Objects without an ETag up to this size are fingerprinted by their bytes (larger ones fail: no identity)."""
FIX_ENDPOINT = "AWS_ENDPOINT_URL (e.g. http://127.0.0.1:9000 for MinIO or moto)"


def is_uri(path: object) -> bool:
    """Whether ``path`` is a remote URI (s3://, gs://, http(s)://) rather than a local path."""
    text = str(path)
    return "://" in text and text.split("://", 1)[0].lower() in REMOTE_SCHEMES


def scheme(uri: str) -> str:
    """The URI's scheme, lower case (gcs is gs)."""
    s = uri.split("://", 1)[0].lower()
    return "gs" if s == "gcs" else s


def s3_endpoint() -> str | None:
    """The S3 endpoint URL from the environment (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, ..., else GDAL's
    AWS_S3_ENDPOINT with AWS_HTTPS), or None for AWS itself."""
    for var in ENDPOINT_VARS:
        if os.environ.get(var):
            return os.environ[var].rstrip("/")
    host = os.environ.get("AWS_S3_ENDPOINT")
    if host and host != "s3.amazonaws.com":
        https = os.environ.get("AWS_HTTPS", "YES").upper() not in ("NO", "FALSE", "OFF", "0")
        return host if "://" in host else f"{'https' if https else 'http'}://{host}"
    return None


def configure_endpoints() -> None:
    """Derive GDAL's (AWS_S3_ENDPOINT, AWS_HTTPS, AWS_VIRTUAL_HOSTING) and MLflow's (MLFLOW_S3_ENDPOINT_URL)
    settings from the S3 endpoint URL, leaving any that are set as they are."""
    endpoint = s3_endpoint()
    if not endpoint:
        return
    url = urlparse(endpoint)
    os.environ.setdefault("AWS_S3_ENDPOINT", url.netloc + url.path.rstrip("/"))
    os.environ.setdefault("AWS_HTTPS", "YES" if url.scheme == "https" else "NO")
    os.environ.setdefault("AWS_VIRTUAL_HOSTING", "FALSE")
    os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", endpoint)


def storage_options(uri: str) -> dict[str, Any]:
    """fsspec options for a URI: for s3://, the endpoint and the credentials from the environment (so a change of
    credentials gets a new client rather than a cached one), and no listings cache: s3fs would otherwise answer
    ``info`` from an earlier listing, so an object replaced since kept its old ETag (a stale cache key) and could
    not be opened ("no longer exists")."""
    if scheme(uri) != "s3":
        return {}
    opts: dict[str, Any] = {"use_listings_cache": False}
    endpoint = s3_endpoint()
    if endpoint:
        opts["endpoint_url"] = endpoint
    for key, var in (("key", "AWS_ACCESS_KEY_ID"), ("secret", "AWS_SECRET_ACCESS_KEY"), ("token", "AWS_SESSION_TOKEN")):
        if os.environ.get(var):
            opts[key] = os.environ[var]
    if os.environ.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "1"):
        opts["anon"] = True
    return opts


def filesystem(uri: str) -> tuple[Any, str]:
    """The fsspec filesystem of a URI and the path within it."""
    try:
        fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri))
    except ImportError as exc:
        raise GeocnnError(f"{uri}: reading {scheme(uri)}:// needs a package that is not installed ({exc}); "
                          "pip install 'geocnn[scale]' (s3fs; gcsfs for gs://)") from None
    return fs, path


def bucket_of(uri: str) -> str:
    """The bucket (or host) of a URI."""
    return urlparse(uri).netloc


def join(base: str, *parts: str) -> str:
    """A URI below ``base`` (``..`` resolved, never above the bucket)."""
    head, _, rest = base.partition("://")
    bucket, _, key = rest.partition("/")
    joined = posixpath.normpath(posixpath.join("/" + key, *parts)).lstrip("/")
    return f"{head}://{bucket}/{joined}"


def parent(uri: str) -> str:
    """The folder URI holding ``uri``."""
    return uri.rstrip("/").rsplit("/", 1)[0]


def name(uri: str) -> str:
    """The last part of a URI's path (its file name)."""
    return urlparse(uri).path.rstrip("/").rsplit("/", 1)[-1]


def _with_scheme(uri: str, path: str) -> str:
    return path if "://" in path else f"{uri.split('://', 1)[0]}://{path}"


def info(uri: str) -> dict[str, Any] | None:
    """The object's metadata (size, ETag, type), or None when there is no such object in an existing bucket.

    Raises:
        GeocnnError: when the bucket is missing, access is refused or the endpoint cannot be reached.
    """
    fs, path = filesystem(uri)
    try:
        return fs.info(path)
    except FileNotFoundError as exc:
        if _is_unreachable(exc):  # fsspec's HTTP filesystem reports a refused connection as a missing file
            raise storage_error(exc, uri, "reading") from None
        if scheme(uri) in ("s3", "gs"):
            _check_bucket(fs, uri, exc)
        return None
    except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own types
        raise storage_error(exc, uri, "reading") from None


def _check_bucket(fs: Any, uri: str, exc: BaseException) -> None:
    """Raise the missing-bucket error when ``exc`` (or a look at the bucket) says the bucket does not exist."""
    if _is_missing_bucket(exc):
        raise storage_error(exc, uri, "reading") from None
    try:
        fs.ls(bucket_of(uri), detail=False, refresh=True)
    except Exception as inner:  # noqa: BLE001
        if _is_missing_bucket(inner):
            raise storage_error(inner, uri, "reading") from None


def exists(uri: str) -> bool:
    """Whether an object (or a folder prefix) exists at ``uri``; a missing bucket or refused access is an error."""
    return info(uri) is not None


def is_dir(uri: str) -> bool:
    """Whether ``uri`` is a folder (a prefix holding objects)."""
    meta = info(uri)
    return meta is not None and meta.get("type") == "directory"


def is_file(uri: str) -> bool:
    """Whether ``uri`` is an object (a file)."""
    meta = info(uri)
    return meta is not None and meta.get("type") != "directory"


def list_files(uri: str) -> list[str]:
    """Every object under a folder URI (sorted, hidden parts skipped), as full URIs."""
    fs, path = filesystem(uri)
    try:
        found = fs.find(path)
    except FileNotFoundError:
        found = []
    except Exception as exc:  # noqa: BLE001
        raise storage_error(exc, uri, "listing") from None
    if not found:
        info(uri)  # a missing bucket or refused access says so; an empty folder is just empty
    base = path.rstrip("/")
    out = []
    for p in found:
        rel = p[len(base):].lstrip("/") if p.startswith(base) else p
        if not any(part.startswith(".") for part in rel.split("/")):
            out.append(_with_scheme(uri, p))
    return sorted(out)


@contextlib.contextmanager
def open_uri(uri: str, mode: str = "rb") -> Iterator[IO[Any]]:
    """Open a remote object with fsspec; errors name the URI and the setting to change."""
    fs, path = filesystem(uri)
    try:
        handle = fs.open(path, mode)
    except FileNotFoundError as exc:
        if scheme(uri) in ("s3", "gs"):
            _check_bucket(fs, uri, exc)
        raise storage_error(exc, uri, "opening") from None
    except Exception as exc:  # noqa: BLE001
        raise storage_error(exc, uri, "opening") from None
    with handle:
        yield handle


def read_bytes(uri: str) -> bytes:
    """The whole object."""
    with open_uri(uri) as fh:
        try:
            return fh.read()
        except Exception as exc:  # noqa: BLE001
            raise storage_error(exc, uri, "reading") from None


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """Download an object into a temporary folder (same file name) for readers that need a local file; GeocnnErrors
    raised inside name the URI, not the temporary copy."""
    with tempfile.TemporaryDirectory(prefix="geocnn-remote-") as tmp:
        path = Path(tmp) / (name(uri) or "object")
        path.write_bytes(read_bytes(uri))
        try:
            yield path
        except GeocnnError as exc:
            raise GeocnnError(str(exc).replace(str(path), uri)) from None


def fingerprint(uri: str) -> str:
    """The content identity of a remote object for cache keys: its ETag (or md5/generation) and size, else a hash of
    its bytes. A changed object gets a new fingerprint."""
    meta = info(uri)
    if meta is None:
        raise GeocnnError(f"{uri}: no such object. Fix the path.")
    tag = next((str(meta[k]) for k in ("ETag", "etag", "md5Hash", "generation", "crc32c") if meta.get(k)), None)
    size = meta.get("size")
    if tag:
        return f"{name(uri)}:{size}:{tag.strip(chr(34))}"
    if size is not None and size > HASH_LIMIT:
        raise GeocnnError(f"{uri}: the server gives no ETag and the object is {size / 2**20:.0f} MiB, too large to "
                          "hash on every run; copy it to a local disk or an object store that reports ETags.")
    return f"{name(uri)}:{size}:blake2b:{hashlib.blake2b(read_bytes(uri), digest_size=16).hexdigest()}"


def gdal_path(uri: str) -> str:
    """The GDAL virtual-file-system path of a URI (``/vsis3/``, ``/vsigs/``, ``/vsicurl/``), after deriving GDAL's
    endpoint settings from AWS_ENDPOINT_URL (see :func:`configure_endpoints`); a ``/vsi...`` path as it is."""
    if uri.startswith("/vsi"):
        configure_endpoints()
        return uri
    s = scheme(uri)
    if s == "s3":
        configure_endpoints()
        return "/vsis3/" + uri.split("://", 1)[1]
    if s == "gs":
        return "/vsigs/" + uri.split("://", 1)[1]
    return "/vsicurl/" + uri


def _chain_text(exc: BaseException) -> tuple[str, set[str]]:
    """All messages down the exception chain, and any error codes (botocore ClientError ``Error.Code``)."""
    texts: list[str] = []
    codes: set[str] = set()
    seen: BaseException | None = exc
    depth = 0
    while seen is not None and depth < 8:
        texts.append(f"{type(seen).__name__}: {seen}")
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            err = response.get("Error", {})
            codes.update(str(v) for v in (err.get("Code"),
                                          response.get("ResponseMetadata", {}).get("HTTPStatusCode")) if v)
        status = getattr(seen, "status", None) or getattr(seen, "code", None)
        if isinstance(status, int):
            codes.add(str(status))
        seen = seen.__cause__ or seen.__context__
        depth += 1
    return " | ".join(texts), codes


def _is_missing_bucket(exc: BaseException) -> bool:
    text, codes = _chain_text(exc)
    return "NoSuchBucket" in codes or "bucket does not exist" in text.lower() or "NoSuchBucket" in text


def _is_unreachable(exc: BaseException) -> bool:
    low = _chain_text(exc)[0].lower()
    return any(w in low for w in ("connection refused", "could not connect", "couldn't connect", "failed to connect",
                                  "cannot connect", "connect call failed", "name or service not known", "timed out",
                                  "endpointconnectionerror", "clientconnectorerror"))


def storage_error(exc: BaseException, uri: str, action: str = "reading") -> GeocnnError:
    """A GeocnnError for a failed remote access, naming the URI, what went wrong and the setting to change."""
    text, codes = _chain_text(exc)
    low = text.lower()
    detail = str(exc).strip() or type(exc).__name__
    s = scheme(uri)
    endpoint = s3_endpoint() if s == "s3" else None
    where = f" at {endpoint}" if endpoint else ""
    if _is_missing_bucket(exc):
        return GeocnnError(f"{uri}: the bucket '{bucket_of(uri)}' does not exist{where}. Create it (e.g. `aws s3 mb "
                           f"s3://{bucket_of(uri)}`), fix the URI, or point {FIX_ENDPOINT} at the server that "
                           "holds it.")
    refused = ({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                "403", "401"} & codes or isinstance(exc, PermissionError)
               or any(w in low for w in ("forbidden", "access denied", "accessdenied", "access key id",
                                         "signature we calculated", "unable to locate credentials",
                                         "nocredentials", "response code: 403", "response code: 401")))
    if refused:
        fix = {"s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE; AWS_SESSION_TOKEN for temporary "
                     "keys) and the bucket's policy",
               "gs": "GOOGLE_APPLICATION_CREDENTIALS (a service-account key with access to the bucket)"}.get(
            s, "the server's access rules (GDAL_HTTP_HEADERS / GDAL_HTTP_USERPWD for a login)")
        return GeocnnError(f"{uri}: access refused while {action} ({detail}). Check the credentials: {fix}.")
    if _is_unreachable(exc):
        fix = FIX_ENDPOINT if s == "s3" else "the URL"
        return GeocnnError(f"{uri}: cannot reach the storage server{where} while {action} ({detail}). Start the "
                           f"server or fix {fix}.")
    if isinstance(exc, FileNotFoundError) or "NoSuchKey" in codes or "404" in codes or "response code: 404" in low:
        return GeocnnError(f"{uri}: no such object. Fix the path.")
    return GeocnnError(f"{uri}: {action} failed ({detail}).")


def path_exists(path: str | Path) -> bool:
    """Whether a local path or a remote object exists (a missing bucket or refused access is an error); a GDAL
    ``/vsi...`` path is left for GDAL to open."""
    if str(path).startswith("/vsi"):
        return True
    return exists(str(path)) if is_uri(path) else Path(path).exists()
