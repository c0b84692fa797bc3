"""Test helpers: a run folder's partitioned stage stores, found on storage (every identity folder of a stage,
or the one there is)."""

from __future__ import annotations

from ray_entigraph import schema, storage
from ray_entigraph.layout import Layout
from ray_entigraph.partitions import PartitionedStore


def identities(out: str, stage: str) -> list[str]:
    """The identity folders under entities/ or synthetic/ (oldest first by their summary or markers)."""
    fs, path = storage.filesystem(storage.join(str(out), stage))
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def store(out: str, stage: str, identity: str | None = None) -> PartitionedStore:
    """documents/, or the entities/ or synthetic/ folder of `identity` (the only one when None)."""
    layout = Layout(str(out))
    if stage == schema.INGEST:
        return layout.documents
    found = identities(out, stage)
    if identity is None:
        assert len(found) == 1, f"{stage}: expected one identity folder, found {found}"
        identity = found[0]
    return layout.partitioned(f"{stage}/{identity}")


def rows(out: str, stage: str, identity: str | None = None) -> list[dict]:
    return store(out, stage, identity).read_all()


def error_rows(out: str, stage: str, identity: str | None = None) -> list[dict]:
    return [r for u in store(out, stage, identity).all_error_urls() for r in storage.read_parquet(u).to_pylist()]
