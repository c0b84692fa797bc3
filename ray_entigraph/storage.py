"""The only filesystem code: URLs, listing, atomic shard commit, manifests.

Every stage reads and writes through here. URLs are strings: plain paths, `file://`, `s3://` (s3fs; the
endpoint may be overridden with the standard `AWS_ENDPOINT_URL` for MinIO/Ceph/R2/moto) and any other fsspec
URL. Credentials come from the standard mechanisms of each filesystem, never from our config files.

Commit protocol. A stage's output is a folder of Parquet shards plus a folder of commit markers:

    <output_dir>/<stage>/part-<name>.parquet          the rows
    <output_dir>/errors/<stage>/part-<name>.parquet   failed requests of the same unit of work
    <output_dir>/<stage>/_committed/part-<name>.json  the manifest entry, written last

A shard is committed when its marker exists; readers only read shards that have a marker, so a crash
between the data write and the marker leaves an orphan that nobody reads and the re-run overwrites (shard
names are a hash of the request keys inside, hence deterministic). Local writes go to a temporary name and
are renamed; an object-store PUT is already all-or-nothing, and the marker gives the ordering.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import fsspec
import fsspec.asyn
import pyarrow as pa
import pyarrow.parquet as pq
import s3fs

from ray_entigraph.errors import StorageError

logger = logging.getLogger(__name__)

COMMITTED = "_committed"
ERRORS = "errors"


def local_cache_dir() -> str:
    """This machine's cache for derived local files (the converted bundled model, built-in corpora):
    $RAY_ENTIGRAPH_CACHE, else $XDG_CACHE_HOME/ray_entigraph, else ~/.cache/ray_entigraph."""
    return os.environ.get("RAY_ENTIGRAPH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ray_entigraph")


SETTINGS_ENV = "RAY_ENTIGRAPH_STORAGE"  # the run's object-store settings, as JSON, for every process of the run
DEFAULT_SETTINGS = {"connect_timeout_s": 10.0, "read_timeout_s": 60.0, "max_attempts": 4}  # = config.StorageConfig


def configure(settings: dict) -> dict[str, str]:
    """Use these object-store timeouts and retries in this process, and return the environment variable that
    carries them to the run's other processes (Ray workers get it through the job's runtime environment)."""
    os.environ[SETTINGS_ENV] = json.dumps({**DEFAULT_SETTINGS, **settings}, sort_keys=True)
    return {SETTINGS_ENV: os.environ[SETTINGS_ENV]}


def _s3_config() -> dict[str, Any]:
    """botocore's timeouts and its standard retry mode with the configured attempts, for this process."""
    raw = os.environ.get(SETTINGS_ENV)
    settings = {**DEFAULT_SETTINGS, **(json.loads(raw) if raw else {})}
    return {"connect_timeout": settings["connect_timeout_s"], "read_timeout": settings["read_timeout_s"],
            "retries": {"max_attempts": int(settings["max_attempts"]), "mode": "standard"}}


def _no_expect_continue(request, **_: Any) -> None:
    """An upload waits for the server's `100 Continue` with no timeout at all (aiohttp): send the body at once."""
    request.headers.pop("Expect", None)


class BoundedS3FileSystem(s3fs.S3FileSystem):
    """s3fs with no retry loop of its own around botocore's (which has the configured attempts), and uploads
    that do not wait for `100 Continue`, so that one request against an endpoint that stops answering is
    bounded by about max_attempts x (connect + read timeout) plus backoff; the library defaults allow 5 x 5
    attempts of 20 s, and an upload waited forever. A class of its own so that the bound survives pickling
    to Ray Data's readers."""

    retries = 1
    protocol = ("s3", "s3a")

    async def set_session(self, refresh: bool = False, kwargs: dict | None = None):
        client = await super().set_session(refresh=refresh, kwargs=kwargs or {})
        client.meta.events.register("before-send.s3", _no_expect_continue, unique_id="ray-entigraph-no-expect")
        return client


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for any URL or local path, with this run's object-store settings."""
    if url.startswith(("s3://", "s3a://")):
        fs = BoundedS3FileSystem(config_kwargs=_s3_config())
        return fs, fs._strip_protocol(url)
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def join(url: str, *parts: str) -> str:
    if is_local(url):
        return os.path.join(url.removeprefix("file://"), *parts)
    return posixpath.join(url, *parts)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def read_bytes(url: str) -> bytes:
    """A whole object in one GET (no ETag pinning across range requests, so an object another process
    rewrites, such as the lease or a manifest, reads as one version or the other, never as an error)."""
    fs, path = filesystem(url)
    return fs.cat_file(path)


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


FAULT_ENV = "RAY_ENTIGRAPH_FAULT_AT"


def fault_point(name: str) -> None:
    """A named moment where a fault test kills the whole run: with RAY_ENTIGRAPH_FAULT_AT=<name>:<n>:<file>,
    the n-th time any process of the run (driver or Ray worker) reaches `name` (counted in <file>), it writes
    its pid to <file>.kill and stops there until the test SIGKILLs it and the run. Unset (always, outside
    tests), this is one dictionary lookup."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    wanted, n, counter = spec.split(":", 2)
    if wanted != name:
        return
    with open(counter, "ab") as f:
        f.write(b".")
        f.flush()
        reached = f.tell()
    if reached == int(n):
        with open(counter + ".kill", "w") as f:
            f.write(str(os.getpid()))
        time.sleep(3600)  # killed here, mid-moment


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole object so that a reader sees all of it or none of it."""
    fs, path = filesystem(url)
    if is_local(url):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            if path.endswith(".parquet"):
                f.write(data[: len(data) // 2])
                fault_point("mid-shard-write")  # half a shard on disk, under its temporary name
                data = data[len(data) // 2:]
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        # one PUT, or a multipart upload that is aborted, not completed, when a part fails (fsspec's file
        # objects complete the upload at close even when the write raised: a truncated object)
        fs.pipe_file(path, data)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


class VersionConflict(Exception):
    """A conditional write lost: the object exists (create) or changed since it was read (replace)."""


def _local_version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def create_exclusive(url: str, data: bytes) -> str:
    """Write an object only if it does not exist (a local hard link of a complete temporary file, which fails
    if the name is taken; an S3 PUT with If-None-Match: *). Returns its version; raises VersionConflict."""
    fs, path = filesystem(url)
    if is_local(url):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise VersionConflict(url) from None
        finally:
            os.unlink(tmp)
        return _local_version(data)
    if fs.exists(path) and not _is_s3(fs):
        raise VersionConflict(url)
    try:
        out = fs.pipe_file(path, data, mode="create") if _is_s3(fs) else fs.pipe_file(path, data)
    except Exception as exc:  # noqa: BLE001 - s3fs maps 412 to several exception types
        if _precondition_failed(exc):
            raise VersionConflict(url) from None
        raise
    return _etag(out) or read_versioned(url)[1]


def read_versioned(url: str) -> tuple[bytes, str]:
    """(content, version) read together: a hash locally, the ETag of the same GET on S3."""
    fs, path = filesystem(url)
    if is_local(url):
        data = read_bytes(url)
        return data, _local_version(data)
    if _is_s3(fs):
        bucket, key, _ = fs.split_path(path)

        async def get() -> tuple[bytes, str]:
            out = await fs._call_s3("get_object", Bucket=bucket, Key=key)
            body = out["Body"]
            try:
                return await body.read(), _etag(out)
            finally:
                body.close()

        return fsspec.asyn.sync(fs.loop, get)
    data = read_bytes(url)
    return data, _local_version(data)


def replace_if(url: str, data: bytes, version: str) -> str:
    """Overwrite an object only if it is still at `version` (a lock-guarded compare locally, If-Match on
    S3). Returns the new version; raises VersionConflict."""
    fs, path = filesystem(url)
    if is_local(url):
        import fcntl

        with open(f"{path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not os.path.exists(path) or _local_version(read_bytes(url)) != version:
                    raise VersionConflict(url)
                write_bytes(url, data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return _local_version(data)
    if not _is_s3(fs):  # no conditional write known for this filesystem: compare, then write (not atomic)
        if read_versioned(url)[1] != version:
            raise VersionConflict(url)
        write_bytes(url, data)
        return _local_version(data)
    try:
        out = fs.pipe_file(path, data, IfMatch=version)
    except Exception as exc:  # noqa: BLE001
        if _precondition_failed(exc) or isinstance(exc, FileNotFoundError):
            raise VersionConflict(url) from None
        raise
    return _etag(out) or read_versioned(url)[1]


def _is_s3(fs) -> bool:
    return "s3" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,))


def _etag(response) -> str:
    return str((response or {}).get("ETag", "")).strip('"') if isinstance(response, dict) else ""


def _precondition_failed(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc} {exc.__cause__!r}"
    return any(w in text for w in ("PreconditionFailed", "Precondition Failed", "412", "ConditionalRequestConflict"))


def list_files(url: str, suffix: str = "") -> list[str]:
    """Files directly under `url` ending in `suffix`, as URLs, sorted; [] when the folder does not exist."""
    fs, path = filesystem(url)
    fs.invalidate_cache(path)  # object-store listings are cached per process; we need the current one
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    prefix = url.split("://")[0] + "://" if not is_local(url) else ""
    out = []
    for entry in entries:
        name = posixpath.basename(entry.rstrip("/"))
        if name.endswith(suffix):
            out.append(join(url, name) if prefix else entry)
    return sorted(out)


def file_identity(url: str) -> list:
    """[url, size, version] of one file: the version is the modification time, or the object store's ETag or
    last-modified time, so that an edited file has another identity (one metadata request, no content read)."""
    fs, path = filesystem(url)
    info = fs.info(path)
    version = next((info[k] for k in ("mtime", "ETag", "etag", "LastModified", "last_modified", "md5Hash",
                                      "generation") if info.get(k) is not None), None)
    return [url, info.get("size"), str(version)]


def for_ray_data(urls: list[str]) -> tuple[list[str], object | None]:
    """(paths, filesystem) for Ray Data readers: object-store URLs go through our fsspec filesystem, so Ray
    Data sees the same endpoint and credentials as every other read (AWS_ENDPOINT_URL included)."""
    if not urls or all(is_local(u) for u in urls):
        return [u.removeprefix("file://") for u in urls], None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, _ = filesystem(urls[0])
    return [filesystem(u)[1] for u in urls], PyFileSystem(FSSpecHandler(fs))


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def read_parquet(url: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


READ_THREADS = 16  # concurrent object reads of one task (object-store requests are latency-bound)


def read_parquet_many(urls: list[str], columns: list[str] | None = None) -> list[pa.Table]:
    """Several Parquet files read concurrently, in the order given."""
    if len(urls) <= 1:
        return [read_parquet(u, columns) for u in urls]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(urls))) as pool:
        return list(pool.map(lambda u: read_parquet(u, columns), urls))


def read_json_many(urls: list[str]) -> list[dict]:
    """Several small JSON objects read concurrently, in the order given."""
    if len(urls) <= 1:
        return [json.loads(read_text(u)) for u in urls]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(urls))) as pool:
        return list(pool.map(lambda u: json.loads(read_text(u)), urls))


def shard_name(keys: list[str]) -> str:
    """Deterministic shard name: a hash of the request keys inside it."""
    h = hashlib.blake2b("\n".join(sorted(keys)).encode(), digest_size=16).hexdigest()
    return f"part-{h}"


@dataclass
class StageStore:
    """Reads and commits one stage's shards under `output_dir`."""

    output_dir: str
    stage: str
    fence: Any = None  # an object whose check() raises when this run no longer holds output_dir (lease.Fence)

    @property
    def url(self) -> str:
        return join(self.output_dir, self.stage)

    @property
    def committed_url(self) -> str:
        return join(self.output_dir, self.stage, COMMITTED)

    @property
    def errors_url(self) -> str:
        return join(self.output_dir, ERRORS, self.stage)

    def commit(self, table: pa.Table, errors: pa.Table | None, *, keys: list[str], stats: dict[str, Any]) -> dict:
        """Write a shard (and its errors), then its marker. Returns the manifest entry."""
        name = shard_name(keys)
        entry: dict[str, Any] = {"shard": name, "stage": self.stage, "committed_at": time.time(), **stats}
        data = table_to_parquet_bytes(table)
        write_bytes(join(self.url, f"{name}.parquet"), data)
        entry.update(
            rows=table.num_rows,
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            file=f"{name}.parquet",
        )
        if errors is not None and errors.num_rows:
            err_data = table_to_parquet_bytes(errors)
            write_bytes(join(self.errors_url, f"{name}.parquet"), err_data)
            entry.update(error_rows=errors.num_rows, error_file=f"{ERRORS}/{self.stage}/{name}.parquet")
        else:
            entry.update(error_rows=0, error_file=None)
        fault_point("between-data-and-marker")
        if self.fence is not None:  # the marker makes the shard visible: only the lease holder may write it
            self.fence.check()
        write_text(join(self.committed_url, f"{name}.json"), json.dumps(entry, sort_keys=True))
        return entry

    def manifest_entries(self) -> list[dict]:
        return read_json_many(list_files(self.committed_url, ".json"))

    def shard_urls(self) -> list[str]:
        return [join(self.url, e["file"]) for e in self.manifest_entries() if e.get("rows", 0) > 0]

    def error_urls(self) -> list[str]:
        return [join(self.output_dir, e["error_file"]) for e in self.manifest_entries() if e.get("error_file")]

    def read(self, columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table:
        """All committed rows of this stage (small stages and tests; large ones use Ray Data over shard_urls)."""
        tables = [read_parquet(u, columns) for u in self.shard_urls()]
        if not tables:
            if schema is None:
                return pa.table({})
            return schema.empty_table() if columns is None else schema.empty_table().select(columns)
        return pa.concat_tables(tables)

    def iter_key_column(self, column: str) -> Iterator[str]:
        for url in self.shard_urls():
            yield from read_parquet(url, [column]).column(column).to_pylist()



def check_writable(output_dir: str) -> None:
    """Fail early, on the driver, when the output location cannot be written."""
    probe = join(output_dir, f".write-probe-{uuid.uuid4().hex[:8]}")
    try:
        write_text(probe, "ok")
        fs, path = filesystem(probe)
        fs.rm(path)
    except Exception as exc:  # noqa: BLE001 - turned into a user-facing error
        raise StorageError(
            f"Cannot write to output_dir {output_dir!r}: {type(exc).__name__}: {exc}. "
            "Fix: choose a writable location, or check the credentials/endpoint of the object store."
        ) from exc


def put_dir(local_dir: str, url: str, *, chunksize: int = 50 * 2**20) -> None:
    """Upload a local folder's files (flat or nested) to `url`, each streamed from disk: a file larger than
    two chunks goes up as a multipart upload that is aborted, never completed, if a part fails (a model's
    safetensors shard of 5 GB is never held in memory, nor left half-written on storage)."""
    fs, root = filesystem(url)
    for dirpath, _, files in os.walk(local_dir):
        for name in files:
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, local_dir)
            if is_local(url):
                with open(src, "rb") as f:
                    write_bytes(join(url, *rel.split(os.sep)), f.read())
            elif _is_s3(fs):
                fs.put_file(src, posixpath.join(root, *rel.split(os.sep)), chunksize=chunksize)
            else:
                fs.put_file(src, posixpath.join(root, *rel.split(os.sep)))


def get_dir(url: str, local_dir: str) -> None:
    """Download every file under `url` into `local_dir`, keeping the relative layout."""
    fs, root = filesystem(url)
    top = os.path.abspath(local_dir)
    for path in fs.find(root):
        rel = posixpath.relpath(path, root)
        dst = os.path.abspath(os.path.join(top, *rel.split("/")))
        if os.path.commonpath([top, dst]) != top:  # a key holding `..` must not write outside local_dir
            raise StorageError(f"{url!r} holds the object {path!r}, which would be written outside {local_dir!r}. "
                               "Fix: remove or rename that object (keys must not contain '..').")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        fs.get_file(path, dst)  # streamed to disk
