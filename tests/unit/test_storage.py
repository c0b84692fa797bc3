"""Storage (storage.py): the commit protocol of stage shards, and atomic writes."""

import pyarrow as pa
import pytest

from ray_entigraph import schema, storage


def test_commit_protocol_hides_orphans(tmp_path):
    store = storage.StageStore(str(tmp_path), schema.SYNTHESIZE)
    table = schema.rows_to_table([{"task_id": "t1", "text": "x"}, {"task_id": "t2", "text": "y"}], schema.SYNTHETIC)
    entry = store.commit(table, None, keys=["t1", "t2"], stats={"num_ok": 2})
    assert entry["shard"] == storage.shard_name(["t2", "t1"])  # order-free, deterministic
    # an orphan: data written, marker never written (a crash in between)
    storage.write_bytes(storage.join(store.url, "part-orphan.parquet"), storage.table_to_parquet_bytes(table))
    assert store.read(["task_id"]).column("task_id").to_pylist() == ["t1", "t2"]
    assert sorted(store.iter_key_column("task_id")) == ["t1", "t2"]
    errors = schema.rows_to_table([{"stage": "s", "request_key": "t3", "doc_id": "d", "error": "boom"}], schema.ERRORS)
    store.commit(schema.empty_table(schema.SYNTHETIC), errors, keys=["t3"], stats={})
    assert len(store.error_urls()) == 1 and store.manifest_entries()[0]["sha256"]
    errors_read = pa.concat_tables([storage.read_parquet(u) for u in store.error_urls()])
    assert errors_read.column("error").to_pylist() == ["boom"]


def test_no_temp_files_left(tmp_path):
    storage.write_text(str(tmp_path / "a" / "b.json"), "{}")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]


def test_get_dir_refuses_a_key_that_leaves_its_folder(tmp_path):
    import fsspec

    from ray_entigraph.errors import StorageError

    fs = fsspec.filesystem("memory")
    fs.pipe("/getdir/model/config.json", b"{}")
    fs.pipe("/getdir/model/sub/../../../evil.txt", b"x")  # an object store accepts such a key
    with pytest.raises(StorageError, match="outside"):
        storage.get_dir("memory://getdir/model", str(tmp_path / "dst"))
    assert not (tmp_path / "evil.txt").exists() and not list(tmp_path.rglob("evil.txt"))
    fs.rm("/getdir/model/sub/../../../evil.txt")
    storage.get_dir("memory://getdir/model", str(tmp_path / "dst"))
    assert (tmp_path / "dst" / "config.json").read_text() == "{}"


def test_a_failed_part_aborts_the_upload_instead_of_completing_it(s3_bucket, tmp_path, monkeypatch):
    """put_dir streams a large file as a multipart upload; when a part fails the upload is aborted: no
    truncated object appears and no upload is left open. Then a clean upload round-trips."""
    import os

    import boto3
    import s3fs

    folder = tmp_path / "model"
    folder.mkdir()
    payload = os.urandom(11 * 2**20)  # three 5 MiB parts (S3's minimum part size) at chunksize 5 MiB
    (folder / "model-00001.safetensors").write_bytes(payload)
    original, parts = s3fs.S3FileSystem._call_s3, []

    async def failing(self, method, *args, **kwargs):
        if method == "upload_part":
            parts.append(kwargs.get("PartNumber"))
            if kwargs.get("PartNumber") == 2:
                raise OSError("injected: part 2 failed")
        return await original(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", failing)
    with pytest.raises(OSError, match="part 2"):
        storage.put_dir(str(folder), f"{s3_bucket}/export", chunksize=5 * 2**20)
    monkeypatch.undo()
    assert 2 in parts  # it was a multipart upload
    assert not storage.exists(f"{s3_bucket}/export/model-00001.safetensors")
    bucket = s3_bucket.removeprefix("s3://")
    assert not boto3.client("s3").list_multipart_uploads(Bucket=bucket).get("Uploads")

    storage.put_dir(str(folder), f"{s3_bucket}/export", chunksize=5 * 2**20)
    storage.get_dir(f"{s3_bucket}/export", str(tmp_path / "back"))
    assert (tmp_path / "back" / "model-00001.safetensors").read_bytes() == payload
