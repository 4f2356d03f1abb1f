"""Object storage: `s3://` against a real SeaweedFS server and `gs://` against fake-gcs-server.

Both servers are started once per session on 127.0.0.1 (see `tests/servers.py`) and killed at
the end. Every test writes under its own folder of one bucket, through the public
`Checkpointer` (and the `roxxel` command), with the environment variables a user would set.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import textwrap
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import servers
from conftest import assert_same_state, make, run_python, state_arrays, train_steps
from mpjob import check_ok, run_job
from roxxel import _storage
from roxxel._cli import main as roxxel_main
from roxxel.checkpoint import Checkpointer, CheckpointPathError, StorageUnreachableError

SCHEMES = {"s3": "s3", "gcs": "gs"}


def fresh_url(backend: str) -> str:
    return f"{SCHEMES[backend]}://{servers.BUCKET}/run-{uuid.uuid4().hex[:8]}"


def object_keys(backend: str, server: servers.Server, url: str) -> list[str]:
    """Every object under `url`, as keys relative to it, listed by the server itself."""
    prefix = url.split(f"{servers.BUCKET}/", 1)[1] + "/"
    if backend == "s3":
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=server.url,
            aws_access_key_id=servers.S3_ACCESS_KEY,
            aws_secret_access_key=servers.S3_SECRET_KEY,
            region_name="us-east-1",
        )
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=servers.BUCKET, Prefix=prefix
        )
        keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    else:
        listing = f"{server.url}/storage/v1/b/{servers.BUCKET}/o?prefix={prefix}&maxResults=10000"
        with urllib.request.urlopen(listing, timeout=30) as response:
            keys = [item["name"] for item in json.load(response).get("items", [])]
    return sorted(key[len(prefix) :] for key in keys)


def delete_object(backend: str, server: servers.Server, url: str, key: str) -> None:
    """Delete one object (`key` relative to `url`) behind Roxxel's back."""
    name = url.split(f"{servers.BUCKET}/", 1)[1] + "/" + key
    if backend == "s3":
        import boto3

        boto3.client(
            "s3",
            endpoint_url=server.url,
            aws_access_key_id=servers.S3_ACCESS_KEY,
            aws_secret_access_key=servers.S3_SECRET_KEY,
            region_name="us-east-1",
        ).delete_object(Bucket=servers.BUCKET, Key=name)
    else:
        quoted = urllib.parse.quote(name, safe="")
        request = urllib.request.Request(
            f"{server.url}/storage/v1/b/{servers.BUCKET}/o/{quoted}", method="DELETE"
        )
        urllib.request.urlopen(request, timeout=30).close()


def top_level(keys: list[str]) -> set[str]:
    return {key.split("/", 1)[0] for key in keys}


@pytest.mark.slow
def test_save_restore_and_retention(store: tuple[str, servers.Server]) -> None:
    backend, server = store
    url = fresh_url(backend)
    model, optimizer = make(0)
    losses = {1: 0.5, 2: 0.9, 3: 0.8, 4: 0.7}
    with Checkpointer(url, model, optimizer, max_to_keep=2) as ck:
        assert ck.directory == url
        assert ck.restore() == 0
        for step, loss in losses.items():
            train_steps(model, optimizer, 1)
            ck.save(step, {"loss": loss})
        ck.wait_until_finished()
        # newest two plus the best (step 1); step 2 was deleted from the bucket
        assert ck.all_steps() == [1, 3, 4]
    saved = state_arrays(model, optimizer)

    keys = object_keys(backend, server, url)
    assert top_level(keys) == {"1", "3", "4"}
    # committed by a marker object, not by renaming a temporary folder
    for step in ("1", "3", "4"):
        assert f"{step}/commit_success.txt" in keys
    assert not [key for key in keys if "orbax-checkpoint-tmp" in key]

    # restart: a new Checkpointer with a fresh model finds and restores the newest step
    model2, optimizer2 = make(1)
    with Checkpointer(url, model2, optimizer2, max_to_keep=2) as ck2:
        assert ck2.restore() == 4
        assert_same_state(saved, state_arrays(model2, optimizer2))
        assert ck2.best_step() == 1
        assert ck2.restore(best=True) == 1
        assert ck2.metrics(3) == {"loss": pytest.approx(0.8)}


def test_step_without_commit_marker_is_never_restored(store: tuple[str, servers.Server]) -> None:
    backend, server = store
    url = fresh_url(backend)
    model, optimizer = make(0)
    with Checkpointer(url, model, optimizer) as ck:
        ck.save(1, {"loss": 1.0})
        ck.wait_until_finished()
        first = state_arrays(model, optimizer)
        train_steps(model, optimizer, 2)
        ck.save(2, {"loss": 0.5})
    # a save interrupted before its last write: all data there, but no commit marker
    delete_object(backend, server, url, "2/commit_success.txt")
    assert "2/state/manifest.ocdbt" in object_keys(backend, server, url)

    model2, optimizer2 = make(1)
    with Checkpointer(url, model2, optimizer2) as ck2:
        assert ck2.all_steps() == [1]
        assert ck2.restore() == 1
        assert_same_state(first, state_arrays(model2, optimizer2))
        # the step can be saved again over the unfinished one
        ck2.save(2, {"loss": 0.4})
        ck2.wait_until_finished()
        assert ck2.all_steps() == [1, 2]
        assert ck2.metrics(2) == {"loss": pytest.approx(0.4)}


RUN_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import make, train_steps
    from roxxel.checkpoint import Checkpointer

    model, optimizer = make(0)
    ck = Checkpointer({url!r}, model, optimizer, max_to_keep=2)
    start = ck.restore()
    print("resumed from", start, flush=True)
    for step in range(start + 1, start + 4):
        train_steps(model, optimizer, 1)
        ck.save(step, {{"loss": 1.0 / step}})
    # no wait and no close: the last save is still being written when the script ends
    """
)


@pytest.mark.slow
def test_script_restart_resumes_and_last_save_is_committed(
    store: tuple[str, servers.Server], tmp_path: Path
) -> None:
    backend, server = store
    url = fresh_url(backend)
    script = tmp_path / "train.py"
    script.write_text(RUN_SCRIPT.format(tests=str(Path(__file__).parent), url=url))
    first = run_python(script, tmp_path, timeout=120, env=server.env)
    assert first.returncode == 0, first.stderr[-4000:]
    assert "resumed from 0" in first.stdout
    second = run_python(script, tmp_path, timeout=120, env=server.env)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resumed from 3" in second.stdout
    keys = object_keys(backend, server, url)
    assert top_level(keys) == {"5", "6"}  # max_to_keep=2; the best (lowest loss) is the newest
    assert "6/commit_success.txt" in keys
    assert not [key for key in keys if "orbax-checkpoint-tmp" in key]
    assert not (tmp_path / "s3:").exists() and not (tmp_path / "gs:").exists()


def test_roxxel_command_reads_the_bucket(store: tuple[str, servers.Server]) -> None:
    backend, _ = store
    url = fresh_url(backend)
    model, optimizer = make(0)
    with Checkpointer(url, model, optimizer) as ck:
        ck.save(7, {"loss": 0.25})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # checksums are verified on local directories only (object stores hash their content)
        code = roxxel_main(["ls", url, "--json", "--no-verify"])
    assert code == 0
    listing = json.loads(out.getvalue())
    assert listing["directory"] == url
    [entry] = listing["checkpoints"]
    assert entry["step"] == 7 and entry["state"] == "committed" and entry["latest"]
    assert entry["metrics"] == {"loss": 0.25}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = roxxel_main(["show", url, "--step", "7"])
    assert code == 0
    assert "model/encoder/kernel" in out.getvalue()


def test_temporary_steps_on_object_stores(store: tuple[str, servers.Server]) -> None:
    """The temporary mark is read back through Orbax on a bucket: after a restart, by `ls`
    and by retention, which replaces the temporary step once a newer one is committed."""
    backend, server = store
    url = fresh_url(backend)
    model, optimizer = make(0)
    with Checkpointer(url, model, optimizer, max_to_keep=1) as ck:
        ck.save(1, {"loss": 0.9})
        ck.save(2, {"loss": 0.1}, temporary=True)
        ck.wait_until_finished()
        assert ck.last_save is not None and (ck.last_save.step, ck.last_save.format) == (2, 1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert roxxel_main(["ls", url, "--json", "--no-verify"]) == 0
    marks = {
        e["step"]: (e["temporary"], e["best"]) for e in json.loads(out.getvalue())["checkpoints"]
    }
    assert marks == {1: (False, True), 2: (True, False)}

    model2, optimizer2 = make(1)
    with Checkpointer(url, model2, optimizer2, max_to_keep=1) as ck2:
        assert ck2.restore() == 2
        assert ck2.best_step() == 1
        ck2.save(3, {"loss": 0.95})
        ck2.wait_until_finished()
        assert ck2.all_steps() == [1, 3]  # step 2 replaced; 1 is the best
    assert top_level(object_keys(backend, server, url)) == {"1", "3"}


@pytest.mark.slow
def test_two_process_job_saves_to_s3_and_one_process_restores(
    s3_server: servers.Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The multi-host case: 2 `jax.distributed` processes share one `s3://` checkpoint."""
    from roxxel.checkpoint import verify

    for name, value in s3_server.env.items():  # for `verify` in this process
        monkeypatch.setenv(name, value)
    url = fresh_url("s3")
    out = tmp_path / "out"
    out.mkdir()
    job = run_job("save", url, out, processes=2, local_devices=4, env=s3_server.env)
    check_ok(job)
    assert job.result(0, "same_job_restored") == 3 and job.result(1, "same_job_equal") is True
    keys = object_keys("s3", s3_server, url)
    assert top_level(keys) == {"1", "3", "4"}  # retention ran once; step 4 committed at exit
    assert {"4/state/ocdbt.process_0/manifest.ocdbt", "4/commit_success.txt"} <= set(keys)
    assert "4/state/ocdbt.process_1/manifest.ocdbt" in keys
    assert not [key for key in keys if "orbax-checkpoint-tmp" in key]
    # the primary recorded every object, the other process's included, after the barrier
    results = verify(url)
    assert [r.step for r in results] == [1, 3, 4] and all(r.verified for r in results), results
    assert any(k.startswith("4/state/ocdbt.process_1/d/") for k in keys)

    single = run_job("restore", url, out, processes=1, local_devices=2, env=s3_server.env)
    check_ok(single)
    assert single.result(0, "restored") == 4
    with np.load(out / "expected.npz") as want, np.load(out / "restored-1x2.npz") as got:
        assert sorted(want.files) == sorted(got.files)
        for key in want.files:
            np.testing.assert_array_equal(want[key], got[key], err_msg=key)


def test_s3_dead_endpoint_is_a_clear_error(
    s3_server: servers.Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    dead = f"http://127.0.0.1:{servers.free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    model, optimizer = make(0)
    with pytest.raises(StorageUnreachableError) as info:
        Checkpointer(fresh_url("s3"), model, optimizer, timeout=5)
    message = str(info.value)
    assert dead in message and "AWS_ENDPOINT_URL" in message
    assert info.value.endpoint == dead


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A TCP port that accepts connections and never answers (a black-holed endpoint)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


def test_gcs_silent_endpoint_fails_within_timeout(
    gcs_server: servers.Server, monkeypatch: pytest.MonkeyPatch, silent_endpoint: str
) -> None:
    for name, value in gcs_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", silent_endpoint)
    model, optimizer = make(0)
    with pytest.raises(StorageUnreachableError) as info:
        Checkpointer(fresh_url("gcs"), model, optimizer, timeout=2)
    assert silent_endpoint in str(info.value) and "TENSORSTORE_GCS_HTTP_URL" in str(info.value)
    assert "within 2 s" in str(info.value)


@pytest.mark.parametrize("url", ["s3:///run", "s3://", "gs://"])
def test_url_without_bucket_is_refused(url: str) -> None:
    model, optimizer = make(0)
    with pytest.raises(CheckpointPathError, match="names no bucket"):
        Checkpointer(url, model, optimizer)


def test_s3_settings_follow_the_aws_variables() -> None:
    custom = _storage.s3_settings(
        {"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "http://b:2/"}
    )
    assert custom == _storage.S3Settings("http://b:2", "AWS_ENDPOINT_URL_S3", "us-east-1")
    spec = _storage.s3_kvstore_spec("s3://bkt/runs/one", custom)
    assert spec == {
        "driver": "s3",
        "bucket": "bkt",
        "path": "runs/one",
        "aws_credentials": {"type": "environment"},
        "endpoint": "http://b:2",
        "aws_region": "us-east-1",
    }
    # no endpoint: TensorStore's own AWS default, in the configured region
    aws = _storage.s3_settings({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-west-2"})
    assert aws == _storage.S3Settings(None, None, "eu-west-1")
    assert "endpoint" not in _storage.s3_kvstore_spec("s3://bkt/x", aws)
    assert _storage.endpoint_for("s3://bkt/x", {"AWS_DEFAULT_REGION": "us-west-2"}) == (
        "https://s3.us-west-2.amazonaws.com",
        "AWS (no AWS_ENDPOINT_URL set)",
    )


def test_a_local_checkpoint_copied_to_the_bucket_restores_from_it(
    store: tuple[str, servers.Server], tmp_path: Path
) -> None:
    """Format 2 (Roxxel's files, written locally) is read from an object store with ranged
    reads, e.g. after `gsutil cp -r` or `aws s3 sync` of a run's folder."""
    import fsspec

    backend, _ = store
    model, optimizer = make(0)
    train_steps(model, optimizer, 2)
    saved = state_arrays(model, optimizer)
    with Checkpointer(str(tmp_path / "ck"), model, optimizer) as ck:
        ck.save(2, {"loss": 0.5})
    url = fresh_url(backend)
    fs, root = fsspec.core.url_to_fs(url)
    fs.put(str(tmp_path / "ck" / "2"), f"{root}/2", recursive=True)
    model2, optimizer2 = make(1)
    with Checkpointer(url, model2, optimizer2, read_only=True) as ck:
        assert ck.all_steps() == [2]
        assert ck.restore() == 2
    assert_same_state(state_arrays(model2, optimizer2), saved)


def test_roxxel_open_reads_the_bucket(store: tuple[str, servers.Server]) -> None:
    import roxxel

    backend, _ = store
    url = fresh_url(backend)
    model, optimizer = make(0)
    with Checkpointer(url, model, optimizer) as ck:
        ck.save(1, {"loss": 1.0})
        train_steps(model, optimizer, 1)
        ck.save(2, {"loss": 0.5})
    saved = state_arrays(model, optimizer)
    ckpt = roxxel.open(url)
    assert ckpt.steps == [1, 2] and ckpt.latest == 2 and ckpt.best == 2
    assert ckpt.metrics(1) == {"loss": 1.0}
    for name, array in saved.items():
        np.testing.assert_array_equal(ckpt.read(name), array, err_msg=name)


@pytest.mark.slow
def test_extras_travel_with_the_step_on_object_stores(store: tuple[str, servers.Server]) -> None:
    """Format 1 (TensorStore) carries array extras as leaves and the others as a JSON item."""
    import grain
    from flax import nnx

    backend, server = store
    url = fresh_url(backend)

    def data() -> Iterator[object]:
        return iter(grain.MapDataset.range(30).shuffle(seed=2).batch(4))

    model, optimizer = make(0)
    iterator, config, ema = data(), {"lr": 0.1, "seed": 2**64 + 3}, nnx.clone(make(5)[0])
    next(iterator)
    extras = {"data": iterator, "config": config, "ema": ema}
    with Checkpointer(url, model, optimizer, extras=extras) as ck:
        ck.save(1, {"loss": 1.0})
    expected = [np.asarray(next(iterator)).tolist() for _ in range(3)]
    assert "1/extras/metadata" in object_keys(backend, server, url)

    model2, optimizer2 = make(1)
    fresh = {"data": data(), "config": {}, "ema": nnx.clone(make(6)[0])}
    with Checkpointer(url, model2, optimizer2, extras=fresh) as ck:
        assert ck.restore() == 1
        assert ck.last_restore_report is not None
        assert set(ck.last_restore_report.extras.values()) == {"restored"}
    assert [np.asarray(next(fresh["data"])).tolist() for _ in range(3)] == expected
    assert fresh["config"] == config
    assert_same_state(state_arrays(fresh["ema"]), state_arrays(ema))


def test_every_object_is_checksummed_and_damage_is_found(
    store: tuple[str, servers.Server], capsys: pytest.CaptureFixture[str]
) -> None:
    """On object stores the record is written through fsspec after the upload (every object
    read back once), before the commit marker; `verify`, `roxxel ls` and `restore()` read it
    back through fsspec."""
    import fsspec

    from roxxel.checkpoint import CorruptCheckpointError, verify

    backend, server = store
    url = fresh_url(backend)
    model, optimizer = make(0)
    with Checkpointer(url, model, optimizer, max_to_keep=None) as ck:
        ck.save(1, {"loss": 1.0})
        ck.wait_until_finished()
        first = state_arrays(model, optimizer)
        train_steps(model, optimizer, 1)
        ck.save(2, {"loss": 0.5})
    results = verify(url)
    assert [r.step for r in results] == [1, 2] and all(r.verified for r in results), results
    objects = [k for k in object_keys(backend, server, url) if k.startswith("2/")]
    # every object of the step but the record itself: arrays, metadata and commit marker
    assert results[1].files_checked == len(objects) - 1
    assert {"2/_CHECKPOINT_METADATA", "2/commit_success.txt"} <= set(objects)

    fs, root = fsspec.core.url_to_fs(url)
    data_object = max(
        (k for k in objects if "/d/" in k), key=lambda k: fs.size(f"{root}/{k}")
    ).split("/", 1)[1]
    for name, damage in [("_CHECKPOINT_METADATA", "truncate"), (data_object, "flip")]:
        path = f"{root}/2/{name}"
        original = fs.cat_file(path)
        if damage == "truncate":
            fs.pipe_file(path, original[: len(original) // 2])
        else:
            fs.pipe_file(path, original[:-1] + bytes([original[-1] ^ 1]))
        (result,) = verify(url, step=2)
        assert not result.ok and any(p.startswith(name) for p in result.problems), result
        assert roxxel_main(["ls", url, "--progress", "never"]) == 0
        rows = [line for line in capsys.readouterr().out.splitlines() if "committed  " in line]
        assert "BAD" in rows[1] and rows[0].rstrip().endswith("ok"), rows
        model2, optimizer2 = make(1)
        with Checkpointer(url, model2, optimizer2, read_only=True) as ck2:
            with pytest.raises(CorruptCheckpointError, match=name):
                ck2.restore(step=2)
            assert ck2.restore() == 1
        assert_same_state(first, state_arrays(model2, optimizer2))
        fs.pipe_file(path, original)
    assert all(r.verified for r in verify(url))
