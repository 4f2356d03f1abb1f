"""Object storage: `s3://` routing for Orbax, commit-file atomicity, and a reachability check.

Orbax 0.12.8 writes array data through TensorStore kvstores it builds itself, and it knows only
`gs://` (the `gcs` driver); any other path gets the local `file` driver, so `s3://bucket/run`
turns into a local folder named `s3:` and then fails. `install_s3_routing` patches the three
functions of Orbax's TensorStore layer that decide this, so that `s3://` paths get TensorStore's
`s3` kvstore (upstream has the same hook open as google/orbax#872 and PR #2739). It is
installed once per process, and only when an `s3://` checkpoint directory is opened; `gs://`
and local paths are passed to the original functions unchanged.

Where the data goes, from the standard AWS variables:

* endpoint: `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL` (MinIO, SeaweedFS, R2, ...).
  TensorStore ignores these variables itself, so the endpoint is put into the spec. Without
  either, TensorStore's own AWS default is used (virtual-hosted buckets, region discovered).
* region: `AWS_REGION`, else `AWS_DEFAULT_REGION` (`us-east-1` with a custom endpoint).
* credentials: TensorStore's `environment` provider (`AWS_ACCESS_KEY_ID`,
  `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`). Directory and metadata files go through
  etils.epath and s3fs (botocore), which read the same variables.

Object stores have no atomic rename, so `gs://` and `s3://` checkpoints are committed with a
`commit_success.txt` file written last (Orbax's COMMIT_FILE mode); a step without it is not a
checkpoint. Before opening, `check_reachable` makes one HTTP request to the endpoint, bounded
by the Checkpointer's timeout, so that a wrong or dead endpoint is an immediate, clear error
rather than a save that hangs in the background.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from ._errors import CheckpointPathError, StorageUnreachableError

S3_PREFIX = "s3://"
GCS_PREFIX = "gs://"
_PROBE_CAP_S = 30.0
_GCS_DEFAULT_URL = "https://storage.googleapis.com"

_install_lock = threading.Lock()
_installed = False
ORIGINALS: dict[str, Callable[..., Any]] = {}
"""Orbax's own functions that `install_s3_routing` replaced, by name (kept for its tests)."""


def is_object_store(path: str) -> bool:
    """True for `gs://` and `s3://` paths: no rename, commit by a marker file."""
    return path.startswith((S3_PREFIX, GCS_PREFIX))


def split_bucket(path: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> (`bucket`, `a/b`)."""
    rest = path.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key.strip("/")


@dataclasses.dataclass(frozen=True)
class S3Settings:
    """Where `s3://` data goes, as read from the environment."""

    endpoint: str | None
    """The endpoint URL, or None for AWS itself."""
    endpoint_source: str | None
    """The variable the endpoint came from."""
    region: str | None


def s3_settings(env: Mapping[str, str] | None = None) -> S3Settings:
    """Read the S3 endpoint and region from the standard AWS variables."""
    env = os.environ if env is None else env
    endpoint, source = None, None
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if env.get(name, "").strip():
            endpoint, source = env[name].strip().rstrip("/"), name
            break
    region = (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "").strip() or None
    if endpoint is not None and region is None:
        region = "us-east-1"
    return S3Settings(endpoint, source, region)


def s3_kvstore_spec(path: str, settings: S3Settings | None = None) -> dict[str, Any]:
    """The TensorStore `s3` kvstore spec for an `s3://bucket/key` path."""
    settings = settings or s3_settings()
    bucket, key = split_bucket(path)
    spec: dict[str, Any] = {
        "driver": "s3",
        "bucket": bucket,
        "path": key,
        "aws_credentials": {"type": "environment"},
    }
    if settings.endpoint is not None:
        spec["endpoint"] = settings.endpoint
    if settings.region is not None:
        spec["aws_region"] = settings.region
    return spec


def install_s3_routing() -> None:
    """Route Orbax's TensorStore specs for `s3://` paths to the `s3` kvstore (once per process)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        from orbax.checkpoint._src.path import gcs_utils
        from orbax.checkpoint._src.serialization import tensorstore_utils

        original_normalize: Callable[[str], str] = tensorstore_utils._normalize_path
        original_use_remote: Callable[[str], bool] = tensorstore_utils._use_gcs_driver
        original_kvstore: Callable[[str], dict[str, Any]] = gcs_utils.get_kvstore_for_gcs

        def normalize_path(path: str) -> str:
            # os.path.normpath collapses "s3://" to "s3:/"; put the slash back.
            normalized = original_normalize(path)
            if normalized.startswith("s3:/") and not normalized.startswith(S3_PREFIX):
                normalized = S3_PREFIX + normalized[len("s3:/") :]
            return normalized

        def use_remote_driver(directory: str) -> bool:
            return directory.startswith(S3_PREFIX) or original_use_remote(directory)

        def kvstore_for(path: str) -> dict[str, Any]:
            if path.startswith(S3_PREFIX):
                return s3_kvstore_spec(path)
            return original_kvstore(path)

        ORIGINALS.update(
            _normalize_path=original_normalize,
            _use_gcs_driver=original_use_remote,
            get_kvstore_for_gcs=original_kvstore,
        )
        tensorstore_utils._normalize_path = normalize_path
        tensorstore_utils._use_gcs_driver = use_remote_driver
        gcs_utils.get_kvstore_for_gcs = kvstore_for
        _installed = True


def endpoint_for(path: str, env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The HTTP endpoint an object-store path talks to, and where that choice came from."""
    env = os.environ if env is None else env
    if path.startswith(S3_PREFIX):
        settings = s3_settings(env)
        if settings.endpoint is not None:
            return settings.endpoint, str(settings.endpoint_source)
        region = settings.region or "us-east-1"
        return f"https://s3.{region}.amazonaws.com", "AWS (no AWS_ENDPOINT_URL set)"
    for name in ("TENSORSTORE_GCS_HTTP_URL", "STORAGE_EMULATOR_HOST"):
        value = env.get(name, "").strip().rstrip("/")
        if value:
            # STORAGE_EMULATOR_HOST may be a bare host:port, as google-cloud-storage allows.
            return (value if "://" in value else f"http://{value}"), name
    return _GCS_DEFAULT_URL, "Google Cloud Storage (no TENSORSTORE_GCS_HTTP_URL set)"


def forget_listings(path: str) -> None:
    """Drop the cached listings of the fsspec client Orbax reads and writes `path` with
    (etils.epath's own shared instance, kept for the life of the process), after Roxxel or
    another process changed the folders there: Orbax would otherwise go on seeing a step that
    was moved aside (and fail to delete it) or miss one that was put back."""
    if not is_object_store(path):
        return
    from etils.epath import backend

    backend.fsspec_backend.fs(path).invalidate_cache()


def check_reachable(path: str, *, timeout: float) -> None:
    """One HTTP request to the endpoint behind `path`; any HTTP answer counts as reachable.

    Raises:
        CheckpointPathError: the bucket is missing from the path, or the endpoint is not an
            http(s) URL.
        StorageUnreachableError: no HTTP answer within `min(timeout, 30)` seconds.
    """
    bucket, _ = split_bucket(path)
    if not bucket:
        raise CheckpointPathError(
            f"checkpoint_path {path!r} names no bucket. Write it as "
            f"'{path.split('://', 1)[0]}://<bucket>/<folder>'.",
            path=path,
        )
    url, source = endpoint_for(path)
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise CheckpointPathError(
            f"the storage endpoint {url!r} (from {source}) for {path} is not an http:// or "
            f"https:// URL. Set {source} to a URL such as 'http://127.0.0.1:9000'.",
            path=path,
        )
    seconds = min(float(timeout), _PROBE_CAP_S)
    try:
        # The probe must never go through a proxy the data path would not use.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        opener.open(urllib.request.Request(url + "/", method="GET"), timeout=seconds).close()
    except urllib.error.HTTPError:
        return  # 403, 404, ...: something that speaks HTTP is there
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        hint = (
            "Start the server, fix the variable, or unset it to use AWS itself."
            if path.startswith(S3_PREFIX)
            else "Start the emulator, or unset the variable to use Google Cloud Storage."
        )
        raise StorageUnreachableError(
            f"cannot reach the storage endpoint {url} (from {source}) for checkpoint_path "
            f"{path} within {seconds:g} s: {reason}. {hint}",
            path=path,
            endpoint=url,
        ) from exc


def check_client(path: str) -> None:
    """The fsspec client that etils.epath needs for `path` must be installed.

    Raises:
        CheckpointPathError: it is not; the message gives the pip command.
    """
    scheme, module, extra = (
        ("s3", "s3fs", "s3") if path.startswith(S3_PREFIX) else ("gs", "gcsfs", "gcs")
    )
    if importlib.util.find_spec(module) is None:
        raise CheckpointPathError(
            f"checkpoint_path {path!r} needs the {module} package ({scheme}:// folders and "
            f"metadata files go through it), which is not installed. Install it with "
            f"`pip install 'roxxel[{extra}]'` (or `pip install {module}`).",
            path=path,
        )


def prepare(path: str, *, timeout: float) -> None:
    """Make `path` usable by Orbax: check its client and endpoint, route `s3://` to TensorStore."""
    if not is_object_store(path):
        return
    check_client(path)
    check_reachable(path, timeout=timeout)
    if path.startswith(S3_PREFIX):
        install_s3_routing()
