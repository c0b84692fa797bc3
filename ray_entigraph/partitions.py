"""Partitions: how the documents, entities and synthetic stages split, commit and compact their output so
that the driver reads O(partitions) objects, never O(shards) or O(documents).

A document belongs to partition `partition_of(doc_id, P)` (its id is a uniform hash, so partitions are
even). Every stage keyed by document writes partition by partition:

    <stage>/p=00042/part-<h>.parquet            rows of one unit of work in partition 42
    <stage>/p=00042/_committed/part-<h>.json    the unit's commit marker (written last; workers read these)
    <stage>/_manifest/p=00042.json              the partition sealed: its markers compacted into one object,
                                                with the stage identity it was sealed for and its totals
    <stage>/_manifest/_stage.json               every partition sealed for one stage identity, with totals

Workers commit units and markers; after a stage's units are done, one task per partition seals it (reading
that partition's markers, on the worker) and the driver writes `_stage.json` from the P small rows the seal
tasks return. A resume whose stage identity matches `_stage.json` reads that one object and skips the stage;
otherwise every planning task reads its own partition's manifest or markers. Nothing here holds a list that
grows with the corpus on the driver.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from ray_entigraph import storage

PART_FORMAT = "p={:05d}"
MANIFEST_DIR = "_manifest"
STAGE_SUMMARY = "_stage.json"
TOTAL_FIELDS = ("num_ok", "num_failed", "num_dropped", "num_prompt_tokens", "num_cached_tokens",
                "num_generated_tokens", "num_retries")


def partition_of(doc_id: str, num_partitions: int) -> int:
    """The partition of a document: its id's leading 64 bits modulo the partition count."""
    return int(doc_id[1:17], 16) % num_partitions


def sum_totals(entries: list[dict]) -> dict[str, Any]:
    """Summed commit-marker fields, plus shards, busy seconds, hosts and node ids."""
    totals: dict[str, Any] = {k: 0 for k in TOTAL_FIELDS}
    totals.update(num_shards=len(entries), busy_s=0.0, hosts=[], node_ids=[])
    for e in entries:
        for k in TOTAL_FIELDS:
            totals[k] += int(e.get(k, 0) or 0)
        totals["busy_s"] += float(e.get("wall_s", 0.0) or 0.0)
        for src, dst in (("host", "hosts"), ("node_id", "node_ids")):
            if e.get(src) and e[src] not in totals[dst]:
                totals[dst].append(e[src])
    return totals


def merge_totals(parts: list[dict]) -> dict[str, Any]:
    """Totals of several partitions (each from `sum_totals` or a sealed manifest)."""
    out: dict[str, Any] = {k: 0 for k in (*TOTAL_FIELDS, "num_shards")}
    out.update(busy_s=0.0, hosts=[], node_ids=[])
    for t in parts:
        for k in (*TOTAL_FIELDS, "num_shards"):
            out[k] += int(t.get(k, 0) or 0)
        out["busy_s"] += float(t.get("busy_s", 0.0) or 0.0)
        for k in ("hosts", "node_ids"):
            out[k] += [x for x in t.get(k, []) if x not in out[k]]
    return out


@dataclass(frozen=True)
class PartitionedStore:
    """One partitioned stage folder (`documents`, `entities/<id>`, `synthetic/<id>`) under output_dir."""

    output_dir: str
    stage: str
    num_partitions: int
    fence: Any = None  # the run's lease fence, checked before every marker and manifest write

    @property
    def url(self) -> str:
        return storage.join(self.output_dir, *self.stage.split("/"))

    @property
    def errors_url(self) -> str:
        return storage.join(self.output_dir, storage.ERRORS, *self.stage.split("/"))

    def part(self, p: int) -> storage.StageStore:
        """Partition p as a plain stage store (its shards, markers and errors)."""
        return storage.StageStore(self.output_dir, f"{self.stage}/{PART_FORMAT.format(p)}", fence=self.fence)

    def manifest_url(self, p: int) -> str:
        return storage.join(self.url, MANIFEST_DIR, PART_FORMAT.format(p) + ".json")

    @property
    def summary_url(self) -> str:
        return storage.join(self.url, MANIFEST_DIR, STAGE_SUMMARY)

    # -- one partition (workers) ---------------------------------------------------------------------------

    def sealed(self, p: int) -> dict | None:
        """Partition p's compacted manifest, or None when it was never sealed."""
        try:
            return json.loads(storage.read_text(self.manifest_url(p)))
        except FileNotFoundError:
            return None

    @staticmethod
    def is_current(manifest: dict | None, identity: str) -> bool:
        """A manifest sealed for `identity` with nothing missing (a partition with failed requests is sealed
        incomplete, and the next run plans, commits and seals it again)."""
        return manifest is not None and manifest.get("identity") == identity and manifest.get("complete", True)

    def entries(self, p: int, identity: str) -> list[dict]:
        """Partition p's commit-marker entries: from its manifest when sealed complete for `identity` (one
        GET), else from its markers (one LIST and a GET per marker, on the worker that asks)."""
        manifest = self.sealed(p)
        if self.is_current(manifest, identity):
            return manifest["entries"]
        return self.part(p).manifest_entries()

    def shard_urls(self, p: int, identity: str) -> list[str]:
        part = self.part(p)
        return [storage.join(part.url, e["file"]) for e in self.entries(p, identity) if e.get("rows", 0) > 0]

    def seal(self, p: int, identity: str, *, keep: Callable[[dict], bool] | None = None,
             stats: Callable[[list[dict]], dict] | None = None) -> dict:
        """Compact partition p's markers into its manifest for `identity` (idempotent: a partition already
        sealed complete for it is read, not rewritten). `keep` selects the entries that count (e.g. current
        input files); `stats` adds the stage's own figures, and a `num_missing` among them above 0 seals the
        partition incomplete. Returns the manifest without its entries."""
        manifest = self.sealed(p)
        if not self.is_current(manifest, identity):
            entries = [e for e in self.part(p).manifest_entries() if keep is None or keep(e)]
            figures = stats(entries) if stats else {}
            manifest = {"partition": p, "identity": identity, "sealed_at": time.time(),
                        "complete": not figures.get("num_missing"), "totals": sum_totals(entries),
                        "stats": figures, "entries": entries}
            storage.fault_point("mid-seal")  # some partitions sealed, this one not yet
            if self.fence is not None:
                self.fence.check()
            storage.write_text(self.manifest_url(p), json.dumps(manifest, sort_keys=True))
        return {k: v for k, v in manifest.items() if k != "entries"}

    # -- every partition's markers, for inspection and tests (O(shards): not on a production path) --------

    def all_entries(self) -> list[dict]:
        return [e for p in range(self.num_partitions) for e in self.part(p).manifest_entries()]

    def all_shard_urls(self) -> list[str]:
        return [storage.join(self.part(p).url, e["file"]) for p in range(self.num_partitions)
                for e in self.part(p).manifest_entries() if e.get("rows", 0) > 0]

    def all_error_urls(self) -> list[str]:
        return [storage.join(self.output_dir, e["error_file"]) for e in self.all_entries() if e.get("error_file")]

    def read_all(self, columns: list[str] | None = None) -> list[dict]:
        return [r for u in self.all_shard_urls() for r in storage.read_parquet(u, columns).to_pylist()]

    # -- the whole stage (driver) ----------------------------------------------------------------------------

    def summary(self) -> dict | None:
        """The stage's summary (`_stage.json`): identity, partition count, totals and stats; None if absent."""
        try:
            return json.loads(storage.read_text(self.summary_url))
        except FileNotFoundError:
            return None

    def is_complete(self, identity: str) -> bool:
        return self.is_current(self.summary(), identity)

    def write_summary(self, identity: str, sealed: list[dict], extra: dict | None = None) -> dict:
        """The stage's summary from the seal rows of every partition (P small dicts)."""
        stats: dict[str, Any] = {}
        for s in sealed:
            for k, v in (s.get("stats") or {}).items():
                if isinstance(v, dict):
                    bucket = stats.setdefault(k, {})
                    for kk, vv in v.items():
                        bucket[kk] = bucket.get(kk, 0) + vv
                elif isinstance(v, (int, float)):
                    stats[k] = stats.get(k, 0) + v
        summary = {"identity": identity, "num_partitions": self.num_partitions, "written_at": time.time(),
                   "complete": all(s.get("complete", True) for s in sealed),
                   "totals": merge_totals([s["totals"] for s in sealed]), "stats": stats, **(extra or {})}
        if self.fence is not None:
            self.fence.check()
        storage.write_text(self.summary_url, json.dumps(summary, sort_keys=True))
        return summary

    def totals(self, since: float | None = None) -> dict:
        """The stage's totals for `status`: its summary when there is one (one GET), else its sealed
        partitions' manifests plus, for partitions not sealed yet, their markers (a stage being written).
        `since`: only what was committed at or after that time (this invocation's progress)."""
        summary = self.summary()
        if summary is not None and since is None:
            return summary["totals"]
        sealed_names = {storage.filesystem(u)[1].rsplit("/", 1)[-1]
                        for u in storage.list_files(storage.join(self.url, MANIFEST_DIR), ".json")}

        def partition_totals(p: int) -> dict | None:
            manifest = self.sealed(p) if PART_FORMAT.format(p) + ".json" in sealed_names else None
            entries = manifest["entries"] if manifest else self.part(p).manifest_entries()
            if since is not None:
                entries = [e for e in entries if e.get("committed_at", 0) >= since]
            return sum_totals(entries) if entries else None

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=storage.READ_THREADS) as pool:  # P small reads, latency-bound
            parts = [t for t in pool.map(partition_totals, range(self.num_partitions)) if t is not None]
        return merge_totals(parts)
