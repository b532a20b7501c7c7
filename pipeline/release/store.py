"""Where a registry is published for a web app to fetch: a local folder (static hosting) or an S3-API bucket
(AWS S3, MinIO, Cloudflare R2, GCS interoperability, a local moto server), and how to publish and check it there.

Paths inside a store are the registry's relative POSIX paths. `sync` uploads every file the index references
first and the index last, so a reader never sees an index pointing at a missing file and an interrupted sync leaves
the previously published index, and every file it references, as they were. Bytes are published only if they are
the bytes the index lists (sha256 checked on a fresh read, and again on the bytes actually sent), and `verify`
re-hashes what is stored by reading it back, never trusting sizes or metadata alone.
"""
from __future__ import annotations

import abc
import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from pipeline.fsutil import DIR_MODE, atomic_file, remove_stale_temps, sha256_file, write_bytes_atomic
from pipeline.outcome import IntegrityError, RegistryError

IMMUTABLE = "public, max-age=31536000, immutable"  # content-addressed: a path's bytes never change
NO_CACHE = "no-cache"  # index.json: revalidate on every fetch, so a new release shows up at once
CONTENT_TYPES = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript",
                 ".json": "application/json"}
ENDPOINT_ENV = "PIPELINE_S3_ENDPOINT_URL"
CHUNK = 1 << 20


def content_type(rel: str) -> str:
    """Browsers need application/wasm for streaming compilation and a JavaScript type for module scripts."""
    return CONTENT_TYPES.get(PurePosixPath(rel).suffix.lower(), "application/octet-stream")


def _check_rel(rel: str) -> str:
    """Index paths come from a file; one with '..' or a leading '/' must not write outside the store."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or "\\" in rel or any(part in ("", ".", "..") for part in rel.split("/")):
        raise RegistryError(f"{rel!r}: not a relative path inside the registry")
    return p.as_posix()


class _HashingReader:
    """Hashes what the uploader actually reads (read-only, not seekable, so every byte is read exactly once):
    a file changed between the check and the upload is caught."""

    def __init__(self, f: BinaryIO):
        self._f, self.hash, self.size = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        b = self._f.read(n)
        self.hash.update(b)
        self.size += len(b)
        return b


class Store(abc.ABC):
    """A place holding registry files, addressed by relative POSIX path."""

    url: str

    def read_bytes(self, rel: str) -> bytes | None:
        """The stored bytes, or None when absent."""
        chunks = self._chunks(rel)
        return None if chunks is None else b"".join(chunks)

    def digest(self, rel: str) -> tuple[int, str] | None:
        """(size, sha256) of the stored object from one fresh full read, or None when absent."""
        chunks = self._chunks(rel)
        if chunks is None:
            return None
        h, n = hashlib.sha256(), 0
        for b in chunks:
            h.update(b)
            n += len(b)
        return n, h.hexdigest()

    def sha256(self, rel: str) -> str | None:
        d = self.digest(rel)
        return None if d is None else d[1]

    @abc.abstractmethod
    def size(self, rel: str) -> int | None:
        """The stored size (stat / HEAD, no read), or None when absent."""

    @abc.abstractmethod
    def exists_with(self, rel: str, size: int, sha256: str) -> bool:
        """Cheap check (no full read) that `rel` already holds this content: lets a re-sync skip it."""

    @abc.abstractmethod
    def put_file(self, rel: str, local_path: Path, sha256: str, immutable: bool = True) -> None:
        """Store `local_path` at `rel` whole or not at all; IntegrityError (nothing stored) when the bytes read
        do not hash to `sha256`."""

    @abc.abstractmethod
    def put_bytes(self, rel: str, data: bytes, immutable: bool = False) -> None:
        """Store `data` at `rel` whole or not at all (index.json: not immutable, so caches revalidate it)."""

    @abc.abstractmethod
    def _chunks(self, rel: str) -> Iterator[bytes] | None:
        """The stored bytes as a stream of chunks (a fresh read), or None when absent."""


class LocalStore(Store):
    """A folder served as static files: files 0644, folders 0755, every write a rename of a complete temp file."""

    def __init__(self, root: Path):
        self.root = Path(root).absolute()
        self.url = self.root.as_uri()

    def _path(self, rel: str) -> Path:
        return self.root / _check_rel(rel)

    def _make_dirs(self, rel: str) -> None:
        """Folders on the way are 0755 whatever the umask (the root too if we create it): a web server running
        as another user must be able to serve them."""
        if not self.root.is_dir():
            self.root.mkdir(parents=True)
            os.chmod(self.root, DIR_MODE)
        d = self.root
        for part in PurePosixPath(rel).parent.parts:
            d = d / part
            d.mkdir(exist_ok=True)
            if d.stat().st_mode & 0o777 != DIR_MODE:
                os.chmod(d, DIR_MODE)

    def _chunks(self, rel: str) -> Iterator[bytes] | None:
        path = self._path(rel)
        if not path.is_file():
            return None

        def gen() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while b := f.read(CHUNK):
                    yield b
        return gen()

    def size(self, rel: str) -> int | None:
        p = self._path(rel)
        return p.stat().st_size if p.is_file() else None

    def exists_with(self, rel: str, size: int, sha256: str) -> bool:
        # A local read is cheap: hash it, so a damaged copy of the same size is replaced, not kept.
        return self.size(rel) == size and self.sha256(rel) == sha256

    def put_file(self, rel: str, local_path: Path, sha256: str, immutable: bool = True) -> None:
        try:
            self._make_dirs(_check_rel(rel))
            with atomic_file(self._path(rel)) as tmp, open(local_path, "rb") as src, open(tmp, "wb") as out:
                reader = _HashingReader(src)
                while b := reader.read(CHUNK):
                    out.write(b)
                out.flush()
                os.fsync(out.fileno())
                if reader.hash.hexdigest() != sha256:  # raised inside atomic_file: the temp copy is dropped
                    raise IntegrityError(f"{local_path}: sha256 {reader.hash.hexdigest()[:16]}… differs from the "
                                         f"listed {sha256[:16]}… while copying to {rel}; not publishing it")
        except PermissionError as e:
            raise RegistryError(f"{self.url}/{rel}: permission denied ({e})") from None

    def put_bytes(self, rel: str, data: bytes, immutable: bool = False) -> None:
        try:
            self._make_dirs(_check_rel(rel))
            write_bytes_atomic(self._path(rel), data)
        except PermissionError as e:
            raise RegistryError(f"{self.url}/{rel}: permission denied ({e})") from None


class S3Store(Store):
    """An S3-API bucket (+ key prefix). Credentials come from boto3's usual chain (env, ~/.aws, instance role);
    the endpoint from `endpoint_url` or $PIPELINE_S3_ENDPOINT_URL (MinIO, R2, GCS interoperability, moto)."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client=None):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint_url = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        if client is None:
            import boto3
            from botocore.config import Config

            extra = {}
            if self.endpoint_url:  # non-AWS servers: path-style URLs, and no checksum headers they may reject
                extra = {"s3": {"addressing_style": "path"}, "request_checksum_calculation": "when_required",
                         "response_checksum_validation": "when_required"}
            session = boto3.session.Session()
            client = session.client("s3", endpoint_url=self.endpoint_url,
                                    region_name=session.region_name or "us-east-1",
                                    config=Config(connect_timeout=10, read_timeout=60,
                                                  retries={"max_attempts": 3, "mode": "standard"}, **extra))
        self.client = client

    def _key(self, rel: str) -> str:
        rel = _check_rel(rel)
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _call(self, rel: str, op: str, absent: bool = False, **kwargs):
        """`client.<op>(Bucket, Key, …)`; botocore's errors become one RegistryError line naming the object, the
        endpoint and the cause (no traceback wall). With `absent`, a missing key gives None."""
        where = f"{self.url}/{rel}" + (f" (endpoint {self.endpoint_url})" if self.endpoint_url else "")
        try:
            return getattr(self.client, op)(Bucket=self.bucket, Key=self._key(rel), **kwargs)
        except ClientError as e:
            err = e.response.get("Error", {})
            code, msg = str(err.get("Code", "")), err.get("Message", "")
            if absent and code in ("404", "NoSuchKey", "NotFound"):
                return None  # a HEAD of a missing bucket is a 404 too: GETs and PUTs tell the two apart
            if code == "NoSuchBucket":
                cause = f"bucket {self.bucket!r} does not exist"
            elif code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"):
                cause = f"access denied ({code}{': ' + msg if msg else ''}); check the credentials and bucket policy"
            else:
                cause = f"{code}: {msg}" if msg else f"error {code}"
            raise RegistryError(f"{where}: {cause}") from None
        except NoCredentialsError:
            raise RegistryError(f"{where}: no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                                "AWS_PROFILE)") from None
        except EndpointConnectionError as e:
            raise RegistryError(f"{where}: endpoint unreachable: {e}", retryable=True) from None
        except BotoCoreError as e:
            raise RegistryError(f"{where}: {type(e).__name__}: {e}", retryable=True) from None

    def _chunks(self, rel: str) -> Iterator[bytes] | None:
        got = self._call(rel, "get_object", absent=True)
        if got is None:
            return None

        def gen() -> Iterator[bytes]:
            with contextlib.closing(got["Body"]) as body:
                try:
                    yield from body.iter_chunks(CHUNK)
                except BotoCoreError as e:
                    raise RegistryError(f"{self.url}/{rel}: reading failed: {type(e).__name__}: {e}",
                                        retryable=True) from None
        return gen()

    def size(self, rel: str) -> int | None:
        head = self._call(rel, "head_object", absent=True)
        return None if head is None else int(head["ContentLength"])

    def exists_with(self, rel: str, size: int, sha256: str) -> bool:
        head = self._call(rel, "head_object", absent=True)
        return (head is not None and int(head["ContentLength"]) == size
                and head.get("Metadata", {}).get("sha256") == sha256)

    def _args(self, rel: str, sha256: str, immutable: bool) -> dict:
        return {"ContentType": content_type(rel), "CacheControl": IMMUTABLE if immutable else NO_CACHE,
                "Metadata": {"sha256": sha256}}

    def put_file(self, rel: str, local_path: Path, sha256: str, immutable: bool = True) -> None:
        with open(local_path, "rb") as f:
            reader = _HashingReader(f)
            self._call(rel, "upload_fileobj", Fileobj=reader, ExtraArgs=self._args(rel, sha256, immutable))
        if reader.hash.hexdigest() != sha256:  # the file changed since it was checked: take back what we sent
            self._call(rel, "delete_object")
            raise IntegrityError(f"{local_path}: sha256 {reader.hash.hexdigest()[:16]}… differs from the listed "
                                 f"{sha256[:16]}… while uploading to {self.url}/{rel}; not publishing it")

    def put_bytes(self, rel: str, data: bytes, immutable: bool = False) -> None:
        self._call(rel, "put_object", Body=data, **self._args(rel, hashlib.sha256(data).hexdigest(), immutable))


def open_store(location: str | Path, endpoint_url: str | None = None) -> Store:
    """`s3://bucket/prefix` -> S3Store; `file://…` or a plain path -> LocalStore. Other schemes are refused
    rather than taken for a folder named 'gs:'."""
    text = str(location)
    if "://" not in text:
        return LocalStore(Path(text))
    u = urlparse(text)
    if u.scheme == "s3" and u.netloc:
        return S3Store(u.netloc, u.path.lstrip("/"), endpoint_url=endpoint_url)
    if u.scheme == "file" and u.netloc in ("", "localhost"):
        return LocalStore(Path(unquote(u.path)))
    raise RegistryError(f"{text}: unsupported location (use s3://bucket/prefix, file:///path or a folder path)")


def _unique(files: list[dict]) -> list[dict]:
    """Several index entries may share a file (a runtime, a model used by two targets): handle it once."""
    seen: dict[str, dict] = {}
    for f in files:
        rel = _check_rel(f["path"])
        if rel in seen and (seen[rel]["sha256"], seen[rel]["bytes"]) != (f["sha256"], f["bytes"]):
            raise RegistryError(f"{rel}: listed twice with different content ({seen[rel]['sha256'][:16]}… and "
                                f"{f['sha256'][:16]}…)")
        seen.setdefault(rel, f)
    return list(seen.values())


def sync(files: list[dict], source_root: Path, dest: Store, index_rel: str, index_bytes: bytes,
         on_progress: Callable[[str, bool], None] | None = None) -> dict:
    """Publish `files` ({"path", "sha256", "bytes"}, all the index references) from `source_root` to `dest`,
    then `index_bytes` at `index_rel`. Files already at `dest` with this size and sha256 are skipped. Every file
    to upload is hashed before anything is written (IntegrityError naming it: nothing published); the index goes
    last. `on_progress(path, uploaded)` is called after each file."""
    files = _unique(files)
    if isinstance(dest, LocalStore):  # leftovers of a killed earlier sync into this folder
        remove_stale_temps(dest.root)
    todo = [f for f in files if not dest.exists_with(f["path"], int(f["bytes"]), f["sha256"])]
    for f in todo:
        src = Path(source_root) / f["path"]
        if not src.is_file():
            raise IntegrityError(f"{src}: listed in the index but missing locally; not publishing")
        digest, size = sha256_file(src), src.stat().st_size
        if (digest, size) != (f["sha256"], int(f["bytes"])):
            raise IntegrityError(f"{src}: sha256 {digest[:16]}… ({size} bytes) differs from the index's "
                                 f"{f['sha256'][:16]}… ({f['bytes']} bytes); not publishing")
    uploading = {f["path"] for f in todo}
    uploaded_bytes = 0
    for f in files:
        if f["path"] in uploading:
            dest.put_file(f["path"], Path(source_root) / f["path"], f["sha256"], immutable=True)
            uploaded_bytes += int(f["bytes"])
        if on_progress is not None:
            on_progress(f["path"], f["path"] in uploading)
    dest.put_bytes(index_rel, index_bytes, immutable=False)
    return {"url": dest.url, "uploaded": len(todo), "skipped": len(files) - len(todo),
            "bytes_uploaded": uploaded_bytes}


def verify(store: Store, files: list[dict]) -> list[str]:
    """Re-read and re-hash every listed file at `store`; one line per problem, naming the file. [] = all good."""
    problems = []
    for f in _unique(files):
        rel, want_size, want_sha = f["path"], int(f["bytes"]), f["sha256"]
        got = store.digest(rel)
        if got is None:
            problems.append(f"{store.url}/{rel}: missing")
        elif got[0] != want_size:
            problems.append(f"{store.url}/{rel}: resized: {got[0]} bytes, index says {want_size}")
        elif got[1] != want_sha:
            problems.append(f"{store.url}/{rel}: sha256 {got[1][:16]}… differs from the index's {want_sha[:16]}…")
    return problems
