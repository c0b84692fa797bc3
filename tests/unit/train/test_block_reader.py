"""Per-rank block reads (train/data.py BlockReader): a rank fetches only the blocks it asks for, from the flat
int32 copy packing writes beside each shard (memory-mapped locally, ranged GETs on S3), and old shards
without that copy still read correctly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ray_entigraph import storage
from ray_entigraph.train.data import BlockReader, raw_url

BLOCK = 16


def _shards(root: str, sizes: list[int], flat: bool = True) -> tuple[list[tuple[str, int]], np.ndarray]:
    rng = np.random.default_rng(0)
    every = rng.integers(0, 50_000, size=(sum(sizes), BLOCK)).astype(np.int32)
    files, start = [], 0
    for k, n in enumerate(sizes):
        blocks = every[start:start + n]
        url = storage.join(root, f"shard{k}.parquet")
        table = pa.table({"input_ids": pa.array(blocks.tolist(), type=pa.list_(pa.int32()))})
        storage.write_bytes(url, storage.table_to_parquet_bytes(table))
        if flat:
            storage.write_bytes(raw_url(url), blocks.astype("<i4").tobytes())
        files.append((url, n))
        start += n
    return files, every


def test_local_reads_are_memory_mapped_and_count_only_what_was_read(tmp_path):
    files, every = _shards(str(tmp_path), [5, 3, 7])
    reader = BlockReader(files, BLOCK)
    assert len(reader) == 15
    mine = [14, 0, 6, 5, 9]
    reader.prefetch(mine[:2])
    got = [reader.get(i) for i in mine]
    assert all((g == every[i]).all() for g, i in zip(got, mine))
    assert reader.bytes_read == len(mine) * BLOCK * 4
    assert all(isinstance(a, np.memmap) for a in reader._arrays.values())


def test_object_storage_reads_one_range_per_block(s3_bucket):
    files, every = _shards(f"{s3_bucket}/blocks", [4, 4])
    reader = BlockReader(files, BLOCK)
    mine = [1, 7, 4]
    reader.prefetch(mine)
    assert all((reader.get(i) == every[i]).all() for i in mine)
    assert reader.bytes_read == 3 * BLOCK * 4  # the rank's own blocks, not the shards


def test_shards_without_the_flat_copy_are_read_whole_once(tmp_path):
    files, every = _shards(str(tmp_path), [3, 2], flat=False)
    reader = BlockReader(files, BLOCK)
    assert (reader.get(4) == every[4]).all() and (reader.get(3) == every[3]).all()
    assert reader.bytes_read == 2 * BLOCK * 4  # the second shard, once
