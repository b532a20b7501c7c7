"""Publishing a registry to a store and verifying it there, against a real S3-API server (moto's standalone server
in a subprocess, real HTTP; no storage mocks) and a local folder."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from pipeline.outcome import IntegrityError, RegistryError
from pipeline.release.store import LocalStore, S3Store, open_store, sync, verify

from s3server import BUCKET, FAKE_AWS, _free_port, _start_moto, _stop

ROOT = Path(__file__).resolve().parents[2]
def _prefix() -> str:
    return f"reg-{uuid.uuid4().hex[:8]}"


def _keys(client, prefix: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    return {o["Key"][len(prefix) + 1:] for page in pages for o in page.get("Contents", [])}


def make_registry(root: Path, contents: dict[str, bytes], version: str = "1") -> tuple[list[dict], bytes]:
    """A fake registry: content-addressed files plus an index.json listing them (what `sync` is given)."""
    files = []
    for name, data in contents.items():
        digest = hashlib.sha256(data).hexdigest()
        shared = name.endswith(".wasm")  # runtime files are shared by versions, like the registry's
        rel = f"runtime/{digest}/{name}" if shared else f"demo/{version}/files/{digest}/{name}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        files.append({"path": rel, "sha256": digest, "bytes": len(data)})
    index = (json.dumps({"schema_version": 1, "version": version, "files": files}, indent=2) + "\n").encode()
    (root / "index.json").write_bytes(index)
    return files, index


V1 = {"model.onnx": b"\x08\x07onnx-v1" * 500, "ort-wasm.wasm": b"\0asm\x01\0\0\0" * 300,
      "ort.mjs": b"export const ort = 1;\n" * 50}


def test_sync_verify_and_resync(s3, tmp_path):
    endpoint, client = s3
    files, index = make_registry(tmp_path / "src", V1)
    prefix = _prefix()
    for dest in (open_store(f"s3://{BUCKET}/{prefix}", endpoint_url=endpoint), open_store(tmp_path / "www")):
        first = sync(files, tmp_path / "src", dest, "index.json", index)
        assert (first["uploaded"], first["skipped"], first["bytes_uploaded"]) == (3, 0, sum(f["bytes"] for f in files))
        assert first["url"] == dest.url
        assert dest.read_bytes("index.json") == index
        assert verify(dest, files) == []
        second = sync(files, tmp_path / "src", dest, "index.json", index)
        assert (second["uploaded"], second["skipped"], second["bytes_uploaded"]) == (0, 3, 0)
        assert dest.read_bytes("nothing/here") is None and dest.sha256("nothing/here") is None

    assert _keys(client, prefix) == {f["path"] for f in files} | {"index.json"}
    by_name = {Path(f["path"]).name: f for f in files}
    wasm = client.head_object(Bucket=BUCKET, Key=f"{prefix}/{by_name['ort-wasm.wasm']['path']}")
    assert wasm["ContentType"] == "application/wasm"
    assert wasm["CacheControl"] == "public, max-age=31536000, immutable"
    assert wasm["Metadata"] == {"sha256": by_name["ort-wasm.wasm"]["sha256"]}
    assert client.head_object(Bucket=BUCKET, Key=f"{prefix}/{by_name['ort.mjs']['path']}")["ContentType"] == \
        "text/javascript"
    idx = client.head_object(Bucket=BUCKET, Key=f"{prefix}/index.json")
    assert (idx["ContentType"], idx["CacheControl"]) == ("application/json", "no-cache")

    www = tmp_path / "www"
    for p in [www, *www.rglob("*")]:
        assert p.stat().st_mode & 0o777 == (0o755 if p.is_dir() else 0o644), p
    assert not [p for p in www.rglob("*") if p.name.endswith(".tmp")]


def test_verify_names_altered_missing_and_resized(s3, tmp_path):
    endpoint, client = s3
    files, index = make_registry(tmp_path / "src", V1)
    prefix = _prefix()
    remote = S3Store(BUCKET, prefix, endpoint_url=endpoint)
    sync(files, tmp_path / "src", remote, "index.json", index)
    altered, deleted, _ = (f["path"] for f in files)
    data = (tmp_path / "src" / altered).read_bytes()
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{altered}", Body=b"X" + data[1:])  # same size, other bytes
    client.delete_object(Bucket=BUCKET, Key=f"{prefix}/{deleted}")
    problems = verify(remote, files)
    assert len(problems) == 2, problems
    assert altered in problems[0] and "differs from the index's" in problems[0]
    assert problems[1] == f"s3://{BUCKET}/{prefix}/{deleted}: missing"

    local = LocalStore(tmp_path / "www")
    sync(files, tmp_path / "src", local, "index.json", index)
    target = tmp_path / "www" / files[2]["path"]
    target.write_bytes(target.read_bytes()[:100])
    resized = f"{local.url}/{files[2]['path']}: resized: 100 bytes, index says {files[2]['bytes']}"
    assert verify(local, files) == [resized]
    # the next sync repairs what it can see cheaply (a different size)
    assert sync(files, tmp_path / "src", local, "index.json", index)["uploaded"] == 1
    assert verify(local, files) == []


def test_sync_refuses_a_file_that_is_not_what_the_index_says(s3, tmp_path):
    endpoint, client = s3
    files, index = make_registry(tmp_path / "src", V1)
    bad = tmp_path / "src" / files[1]["path"]
    bad.write_bytes(b"\0asm\x02" + bad.read_bytes()[5:])  # same size, other content
    prefix = _prefix()
    for dest in (S3Store(BUCKET, prefix, endpoint_url=endpoint), LocalStore(tmp_path / "www")):
        with pytest.raises(IntegrityError, match=files[1]["path"]):
            sync(files, tmp_path / "src", dest, "index.json", index)
        assert dest.read_bytes("index.json") is None
    assert _keys(client, prefix) == set()
    assert not (tmp_path / "www").exists() or not any((tmp_path / "www").rglob("*"))
    # the second line of defence: the bytes actually sent are hashed too (a file changed after sync checked it)
    for dest in (S3Store(BUCKET, prefix, endpoint_url=endpoint), LocalStore(tmp_path / "www")):
        with pytest.raises(IntegrityError, match="while"):
            dest.put_file(files[1]["path"], bad, files[1]["sha256"])
        assert dest.read_bytes(files[1]["path"]) is None
    assert _keys(client, prefix) == set()
    assert not [p for p in (tmp_path / "www").rglob("*") if p.is_file()]


SYNC_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from pipeline.release.store import open_store, sync
    src, dest, pause = Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    index = (src / "index.json").read_bytes()
    sync(json.loads(index)["files"], src, open_store(dest), "index.json", index,
         on_progress=lambda path, uploaded: time.sleep(pause))
    print("sync finished")
""")


@pytest.mark.parametrize("kind", ["s3", "local"])
def test_killed_sync_leaves_the_published_index_intact(s3, tmp_path, kind):
    endpoint, client = s3
    files1, index1 = make_registry(tmp_path / "v1", V1, version="1")
    v2 = {"model.onnx": b"\x08\x07onnx-v2" * 700, "model_int8.onnx": b"int8" * 900,
          "ort.mjs": b"export const ort = 2;\n" * 60, "ort-wasm.wasm": V1["ort-wasm.wasm"]}  # last one: shared
    files2, index2 = make_registry(tmp_path / "v2", v2, version="2")
    prefix = _prefix()
    dest_url = f"s3://{BUCKET}/{prefix}" if kind == "s3" else str(tmp_path / "www")
    dest = open_store(dest_url, endpoint_url=endpoint)
    sync(files1, tmp_path / "v1", dest, "index.json", index1)
    old = {f["path"] for f in files1}
    listed = (lambda: _keys(client, prefix)) if kind == "s3" else \
        (lambda: {p.relative_to(tmp_path / "www").as_posix() for p in (tmp_path / "www").rglob("*")
                 if p.is_file() and ".tmp" not in p.as_posix()})  # not the writer's temp copies

    script = tmp_path / "sync_script.py"
    script.write_text(SYNC_SCRIPT)
    env = {**os.environ, "PIPELINE_S3_ENDPOINT_URL": endpoint}  # the script finds the endpoint in the env
    proc = subprocess.Popen([sys.executable, str(script), str(ROOT), str(tmp_path / "v2"), dest_url, "30"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (listed() - old - {"index.json"}):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no new object within 60 s"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL and b"sync finished" not in out, err.decode()[-2000:]

    new = listed() - old - {"index.json"}
    assert 1 <= len(new) < len({f["path"] for f in files2} - old)  # really killed half-way
    assert dest.read_bytes("index.json") == index1
    assert verify(dest, files1) == []

    # the next sync completes the release
    assert sync(files2, tmp_path / "v2", dest, "index.json", index2)["uploaded"] == 3 - len(new)
    assert dest.read_bytes("index.json") == index2 and verify(dest, files2) == []


def test_clear_errors_for_missing_bucket_and_dead_endpoint(s3, tmp_path):
    endpoint, _ = s3
    files, index = make_registry(tmp_path / "src", V1)
    missing = open_store("s3://no-such-bucket/reg", endpoint_url=endpoint)
    with pytest.raises(RegistryError, match=r"s3://no-such-bucket/reg/.*bucket 'no-such-bucket' does not exist"):
        sync(files, tmp_path / "src", missing, "index.json", index)
    with pytest.raises(RegistryError, match="does not exist"):
        verify(missing, files)

    dead = f"http://127.0.0.1:{_free_port()}"
    store = open_store(f"s3://{BUCKET}/reg", endpoint_url=dead)
    t0 = time.monotonic()
    with pytest.raises(RegistryError) as e:
        sync(files, tmp_path / "src", store, "index.json", index)
    assert f"s3://{BUCKET}/reg/" in str(e.value) and dead in str(e.value) and "unreachable" in str(e.value)
    assert time.monotonic() - t0 < 20
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_access_denied_is_a_clear_error(tmp_path):
    """A server that checks credentials (moto with IAM auth on) refusing unknown keys."""
    proc, endpoint = _start_moto(tmp_path / "moto-auth.log", {"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in FAKE_AWS.items():
                mp.setenv(k, v)
            store = open_store(f"s3://{BUCKET}/reg", endpoint_url=endpoint)
            with pytest.raises(RegistryError, match=rf"s3://{BUCKET}/reg/index.json .*access denied"):
                store.read_bytes("index.json")
    finally:
        _stop(proc)


def test_open_store_locations(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    s = open_store("s3://bucket/some/prefix/")
    assert isinstance(s, S3Store) and (s.bucket, s.prefix, s.url) == ("bucket", "some/prefix",
                                                                     "s3://bucket/some/prefix")
    assert s.endpoint_url == "http://127.0.0.1:9"
    assert isinstance(open_store(tmp_path), LocalStore)
    assert open_store(tmp_path.as_uri()).root == tmp_path
    assert open_store("relative/dir").root == Path.cwd() / "relative/dir"
    with pytest.raises(RegistryError, match="unsupported location"):
        open_store("gs://bucket/x")
    with pytest.raises(RegistryError, match="not a relative path"):
        LocalStore(tmp_path).put_bytes("../escape.json", b"{}")
