"""Curate: the synthetic corpus scored against its documents, filtered and deduplicated, as a new dataset.

Every synthetic row gets a grounding score (`text/grounding.py`: the share of its entities, numbers and
content words that its source document contains, per sentence and overall). Then, as configured
(`curate.*`): sentences below a threshold are removed (repair), rows below a threshold are dropped, and
near-duplicate rows are dropped (`text/dedup.py`: a partition's own near-duplicates found and checked in
its task; across partitions a hash shuffle of 16 bytes per band and row, star edges per bucket, their
components in one task; removal files per partition, only counts on the driver). Each task takes one
partition: it reads that partition's documents once (a synthetic row's document is in the row's own
partition), then curates each of the partition's synthetic shards.

The output is a derived dataset, `output_dir/curated/<curation id>/`, one shard per synthetic shard,
committed with the same protocol as every stage; every dropped row is recorded with its reason in
`errors/curated/<curation id>/`. The synthetic stage's shards are never changed. The curation id hashes the
curate settings and the synthetic shards it reads, so other settings or a grown corpus give a new dataset.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import pyarrow as pa

from ray_entigraph import schema, storage
from ray_entigraph.config import CurateConfig, EntiGraphConfig
from ray_entigraph.corpus import Corpus, documents_by_id, synthetic_shards
from ray_entigraph.layout import Layout, shard_basename
from ray_entigraph.ledger import StageTotals
from ray_entigraph.partitions import PartitionedStore
from ray_entigraph.prompts import PromptSet, render
from ray_entigraph.stages.base import (
    TASK_MAX_RETRIES,
    Stage,
    StagePlan,
    bounded_task,
    commit_unit,
    cpu_task_kwargs,
    error_row,
    items,
    run_partition_tasks,
)
from ray_entigraph.stages.synthesize import prompt_values, template_for
from ray_entigraph.text.dedup import (
    ID_PARTITION_SHIFT,
    SIGNATURE_DTYPE,
    band_hashes,
    components,
    lsh_params,
    row_id,
    row_id_parts,
    signature,
    star_edges,
    verified_star_edges,
)
from ray_entigraph.text.grounding import DocumentIndex, drop_unsupported_sentences, score_text
from ray_entigraph.text.output_filters import output_problem

logger = logging.getLogger(__name__)
DROP_CATEGORIES = ("grounding", "judge", "duplicate", "short", "document", "output")
# Dedup's LSH bands weigh a missed pair (a duplicate kept) above an extra candidate (one comparison more).
LSH_FALSE_POSITIVE_WEIGHT, LSH_FALSE_NEGATIVE_WEIGHT = 0.2, 0.8
DEDUP_ROWS_PER_BLOCK = 2**20  # (band, id) rows per block of dedup's shuffle

# -- pure pieces ---------------------------------------------------------------------------------------


def forced_prefix(prompts, row: dict) -> str:
    """The part of a row's text that the prompt wrote (the response prefix), not the model: not scored."""
    if row["kind"] == schema.KIND_SUMMARY:
        return ""
    try:
        template = template_for(prompts, row["kind"])
    except ValueError:
        return ""
    prefix = render(template.response_prefix, prompt_values(row["title"], "", list(row["entities"] or [])))
    return prefix if row["text"].startswith(prefix) else ""


def curate_row(row: dict, index, cfg: CurateConfig, prefix: str,
               judge_score: float | None = None, document: str = "") -> tuple[dict | None, str | None, str | None]:
    """(the curated row, None, None) or (None, drop category, why it was dropped). `judge_score`: the judge
    model's score of the row (curate.judge), None where it gave none; `document`: its document's text (the
    output filters' language check)."""
    if cfg.output_filters:
        problem = output_problem(row["text"][len(prefix):], row.get("finish_reason"), document,
                                 tuple(cfg.output_filters))
        if problem is not None:
            return None, "output", problem
    text, num_dropped = row["text"], 0
    if cfg.min_sentence_grounding is not None:
        text, num_dropped = drop_unsupported_sentences(text, index, cfg.min_sentence_grounding, keep_prefix=prefix)
    if len(text.strip()) - len(prefix.strip()) < cfg.min_chars:
        return None, "short", f"too short after repair: {num_dropped} sentences below min_sentence_grounding removed"
    score = score_text(text, index, skip_prefix=prefix)
    if cfg.min_grounding is not None and score.score < cfg.min_grounding:
        return None, "grounding", f"grounding {score.score:.2f} < min_grounding {cfg.min_grounding:g} (unsupported: " \
                     f"{', '.join(score.unsupported[:5])})"
    if cfg.min_judge_score is not None:
        if judge_score is None:
            return None, "judge", "the judge gave no rating (its answer is in errors/judged/)"
        if judge_score < cfg.min_judge_score:
            return None, "judge", f"judge score {judge_score:.2f} < min_judge_score {cfg.min_judge_score:g}"
    return {**row, "text": text, "grounding": score.score, "sentence_grounding": score.sentence_scores,
            "unsupported": score.unsupported, "num_sentences_dropped": num_dropped,
            "judge_score": judge_score}, None, None


# -- Ray Data tasks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurateJob:
    """What a curate task needs, built once on the driver and shipped with each task: nothing that grows with
    the corpus (documents are read partition by partition on the workers, `corpus`)."""

    config: EntiGraphConfig
    prompts: PromptSet
    corpus: Corpus  # reads a partition's current documents
    stage: str  # curated/<id>
    layout: Layout  # where to commit (with the run's lease fence)
    judged: PartitionedStore | None = None  # the judge's ratings (curate.judge), read partition by partition


def partition_units(sources: list[tuple[str, dict]], only: set[str] | None = None) -> list[dict]:
    """The units of a curate pass: one per partition, naming its synthetic shards. Each shard keeps its
    ordinal among all of its partition's shards (dedup's row ids) when `only` (URLs) picks some."""
    by_partition: dict[int, list[dict]] = {}
    for url, entry in sources:
        shards = by_partition.setdefault(int(entry["partition"]), [])
        shards.append({"url": url, "ordinal": len(shards)})
    units = [{"partition": p, "shards": json.dumps([s for s in shards if only is None or s["url"] in only])}
             for p, shards in sorted(by_partition.items())]
    return [u for u in units if u["shards"] != "[]"]


def partition_scores(judged: PartitionedStore | None, p: int) -> dict[str, float]:
    """task id -> the judge's score, for partition p's rated rows (none without the judge)."""
    scores: dict[str, float] = {}
    if judged is None:
        return scores
    part = judged.part(p)
    urls = [storage.join(part.url, e["file"]) for e in part.manifest_entries() if e.get("rows", 0) > 0]
    for table in storage.read_parquet_many(urls, ["task_id", "judge_score"]):
        scores.update(zip(table.column("task_id").to_pylist(), table.column("judge_score").to_pylist()))
    return scores


def judge_rated_counts(batch: dict, *, corpus: Corpus, judged: PartitionedStore) -> dict:
    """Partition ids -> {synthetic shard name: its rows the judge has rated} (JSON): a shard curated before the
    judge rated more of its rows (a re-run after an outage) is curated again."""
    out = []
    for p in batch["partition"]:
        rated = set(partition_scores(judged, int(p)))
        counts = {}
        for url in corpus.synthetic.shard_urls(int(p), corpus.synthetic_identity):
            ids = storage.read_parquet(url, ["task_id"]).column("task_id").to_pylist()
            counts[shard_basename(url)] = sum(t in rated for t in ids)
        out.append(json.dumps(counts))
    return {"partition": batch["partition"], "rated": out}


class _PartitionDocuments:
    """A partition's current documents, read once per task and indexed for grounding as rows ask for them."""

    def __init__(self, corpus: Corpus, partition: int):
        self.docs = documents_by_id(corpus, partition)
        self.indexes: dict[str, DocumentIndex] = {}

    def index(self, doc_id: str) -> DocumentIndex | None:
        if doc_id not in self.indexes and doc_id in self.docs:
            doc = self.docs[doc_id]
            # the title counts as the document's: relation texts name it by design
            self.indexes[doc_id] = DocumentIndex.from_text(doc["text"], title=doc["title"] or "")
        return self.indexes.get(doc_id)


def _curated_rows(url: str, job: CurateJob, docs: _PartitionDocuments, scores: dict[str, float]):
    """Yield (row, curated row or None, drop category, drop reason) for every row of a synthetic shard."""
    for row in storage.read_parquet(url).to_pylist():
        index = docs.index(row["doc_id"])
        if index is None:
            yield row, None, "document", "source document not found among the current input's documents"
            continue
        yield row, *curate_row(row, index, job.config.curate, forced_prefix(job.prompts, row),
                               scores.get(row["task_id"]), docs.docs[row["doc_id"]]["text"])


def dedup_folder(job: CurateJob) -> str:
    """Dedup's working files, beside the curated shards (never listed as shards: those are read by marker)."""
    return storage.join(job.layout.store(job.stage).url, "_dedup")


def _partition_file(folder: str, kind: str, partition: int) -> str:
    return storage.join(folder, kind, f"p={partition:05d}.parquet")


def dedup_keys_batch(batch: dict, *, job: CurateJob) -> dict:
    """Dedup pass 1, one partition per call. The rows that survive curation get MinHash signatures; the
    partition's own near-duplicates (rows of one document live in one partition) are found here, their
    candidates checked against the threshold, and written as the partition's local removal file (always
    written, so a re-run never reads an older one). Out go 16 bytes per band of each remaining row: its
    64-bit LSH key and its integer row id, for the corpus-wide shuffle (no signatures, no strings)."""
    import numpy as np

    cfg = job.config.curate
    bands, rows_per_band = dedup_bands(cfg)
    keys_out, ids_out = [], []
    for p, shards in zip(batch["partition"], batch["shards"]):
        p = int(p)
        docs = _PartitionDocuments(job.corpus, p)
        ids, sigs, task_ids = [], [], {}
        scores = partition_scores(job.judged, p)
        for shard in json.loads(str(shards)):
            for i, (row, out, _, _) in enumerate(_curated_rows(shard["url"], job, docs, scores)):
                if out is None:
                    continue
                id_ = row_id(p, int(shard["ordinal"]), i)
                ids.append(id_)
                task_ids[id_] = row["task_id"]
                sigs.append(signature(out["text"], num_perm=cfg.num_perm, ngram=cfg.ngram))
        ids_arr = np.asarray(ids, dtype=np.int64)
        sig_arr = np.stack(sigs) if sigs else np.empty((0, cfg.num_perm), SIGNATURE_DTYPE)
        a, b, _ = verified_star_edges(ids_arr, sig_arr, bands=bands, rows=rows_per_band, threshold=cfg.dedup_threshold)
        members, roots = components(a, b)
        dropped = members != roots
        storage.write_bytes(_partition_file(dedup_folder(job), "local", p), storage.table_to_parquet_bytes(pa.table({
            "id": pa.array(members[dropped], pa.int64()),
            "kept": pa.array([task_ids[int(r)] for r in roots[dropped]], pa.string())})))
        survivors = ~np.isin(ids_arr, members[dropped])
        keys = band_hashes(sig_arr[survivors], bands=bands, rows=rows_per_band)
        keys_out.append(keys.reshape(-1))
        ids_out.append(np.repeat(ids_arr[survivors], bands))
    return {"band": np.concatenate(keys_out) if keys_out else np.empty(0, np.uint64),
            "id": np.concatenate(ids_out) if ids_out else np.empty(0, np.int64)}


def cross_partition_edges(batch: dict) -> dict:
    """Dedup pass 1b, one hash-partitioned block of (band, id) rows: every row of a bucket shares its block.
    Star edges to each bucket's smallest id, between rows of different partitions (a partition's own pairs
    were checked in pass 1)."""
    a, b = star_edges(batch["band"], batch["id"])
    other = (a >> ID_PARTITION_SHIFT) != (b >> ID_PARTITION_SHIFT)
    return {"a": a[other], "b": b[other]}


def resolve_duplicates(folder: str, sources: list[dict], *edge_tables: pa.Table) -> dict:
    """Dedup pass 1c, one task: the connected components of the cross-partition edges (scipy), every member
    but the smallest id of its component dropped, written as one removal file per partition that has drops,
    each naming the task id of the row kept (read from the kept rows' shards). Returns the partitions with
    drops and counts: nothing that grows with the corpus reaches the driver."""
    import numpy as np

    a = np.concatenate([t.column("a").to_numpy() for t in edge_tables] or [np.empty(0, np.int64)])
    b = np.concatenate([t.column("b").to_numpy() for t in edge_tables] or [np.empty(0, np.int64)])
    members, roots = components(a, b)
    dropped = members != roots
    members, roots = members[dropped], roots[dropped]
    shard_urls = {(int(u["partition"]), int(s["ordinal"])): s["url"]
                  for u in sources for s in json.loads(str(u["shards"]))}
    names: dict[int, str] = {}
    by_shard: dict[tuple[int, int], list[int]] = {}
    for r in np.unique(roots).tolist():
        p, ordinal, row = row_id_parts(r)
        by_shard.setdefault((p, ordinal), []).append(r)
    for (p, ordinal), wanted in by_shard.items():
        task_ids = storage.read_parquet(shard_urls[(p, ordinal)], ["task_id"]).column("task_id").to_pylist()
        names.update({r: task_ids[row_id_parts(r)[2]] for r in wanted})
    partitions = members >> ID_PARTITION_SHIFT
    written = []
    for p in np.unique(partitions).tolist():
        here = partitions == p
        storage.write_bytes(_partition_file(folder, "global", p), storage.table_to_parquet_bytes(pa.table({
            "id": pa.array(members[here], pa.int64()),
            "kept": pa.array([names[int(r)] for r in roots[here]], pa.string())})))
        written.append(p)
    return {"partitions": written, "edges": int(len(a)), "dropped": int(len(members))}


def _removals(folder: str, partition: int, global_partitions: set[int]) -> dict[int, str]:
    """row id -> the task id of the row kept in its place, for one partition: its own near-duplicates and
    the corpus-wide ones."""
    out: dict[int, str] = {}
    for kind in ("local", "global") if partition in global_partitions else ("local",):
        table = storage.read_parquet(_partition_file(folder, kind, partition))  # pass 1 wrote every local one
        out.update(zip(table.column("id").to_pylist(), table.column("kept").to_pylist()))
    return out


def commit_batch(batch: dict, *, job: CurateJob, dedup: dict | None = None) -> pa.Table:
    """Pass 2, one partition per call: its documents read once, then each of its synthetic shards curated,
    its near-duplicates dropped (dedup's removal files for the partition), and committed as a curated shard
    with its drop log."""
    store = job.layout.store(job.stage)
    tables = []
    for p, shards in zip(batch["partition"], batch["shards"]):
        p = int(p)
        docs = _PartitionDocuments(job.corpus, p)
        duplicates = _removals(dedup_folder(job), p, set(dedup["partitions"])) if dedup is not None else {}
        scores = partition_scores(job.judged, p)
        for shard in json.loads(str(shards)):
            url = shard["url"]
            started = time.time()
            kept, dropped = [], []
            reasons = dict.fromkeys(DROP_CATEGORIES, 0)
            rated = 0
            for i, (row, out, category, reason) in enumerate(_curated_rows(url, job, docs, scores)):
                rated += row["task_id"] in scores
                original = duplicates.get(row_id(p, int(shard["ordinal"]), i)) if out is not None else None
                if original is not None:
                    category, reason, out = "duplicate", f"near-duplicate of {original}", None
                if out is None:
                    dropped.append(error_row(schema.CURATE, row["task_id"], row["doc_id"], reason))
                    reasons[category] += 1
                else:
                    kept.append(out)
            name = shard_basename(url)
            stats = {"source_shard": name, "num_dropped": len(dropped), "judge_rated": rated,
                     **{f"num_dropped_{k}": v for k, v in reasons.items()},
                     "num_sentences_dropped": sum(r["num_sentences_dropped"] for r in kept),
                     "mean_grounding": (sum(r["grounding"] for r in kept) / len(kept)) if kept else None}
            # drops are not failures: they go to the errors table, but num_failed stays 0
            tables.append(commit_unit(store, kept, [], row_schema=schema.CURATED, key_column=None, started=started,
                                      stats=stats, name_keys=[name, job.stage], drops=dropped))
    return pa.concat_tables(tables)


def dedup_bands(cfg: CurateConfig) -> tuple[int, int]:
    return lsh_params(cfg.dedup_threshold, cfg.num_perm, false_positive_weight=LSH_FALSE_POSITIVE_WEIGHT,
                      false_negative_weight=LSH_FALSE_NEGATIVE_WEIGHT)


def shuffle_blocks(num_rows: int, bands: int) -> int:
    """Blocks of dedup's hash shuffle: about a million (band, id) rows (16 MB) each."""
    return max(1, min(4096, -(-num_rows * bands // DEDUP_ROWS_PER_BLOCK)))


class Curate(Stage):
    """Driver half: every committed synthetic shard not curated yet under the current curation id; with
    dedup, first the corpus-wide near-duplicate pairs (only pairs reach the driver)."""

    name = schema.CURATE
    checks_errors = False  # curate drops rows on purpose; drops are not errors

    def enabled(self, ctx) -> bool:
        return ctx.config.curate.enabled

    def folder(self, ctx) -> str:
        return ctx.curated_stage()

    def plan(self, ctx) -> StagePlan:
        stage = self.folder(ctx)
        corpus = ctx.corpus()
        sources = synthetic_shards(corpus)
        judged = ctx.layout.partitioned(ctx.judge_stage) if ctx.config.curate.judge else None
        rated = None  # a shard curated before the judge rated more of its rows (a re-run after an outage) is redone
        if judged is not None:
            rated = {}
            for r in run_partition_tasks(judged.num_partitions, judge_rated_counts, corpus=corpus, judged=judged):
                rated.update(json.loads(r["rated"]))
        done = {e.get("source_shard") for e in storage.StageStore(ctx.config.output_dir, stage).manifest_entries()
                if rated is None or int(e.get("judge_rated", -1)) == rated.get(e.get("source_shard"), 0)}
        todo = [(u, e) for u, e in sources if shard_basename(u) not in done]
        totals = StageTotals(stage, expected=len(sources), done_before=len(sources) - len(todo))
        if not todo:
            return StagePlan(totals)
        job = CurateJob(ctx.config, ctx.prompts, corpus, stage, ctx.layout, judged)
        units = partition_units(sources, only={u for u, _ in todo})
        return StagePlan(totals, dataset=items(units), units=len(todo), unit="shards", per_row_units=1,
                         worker_args={"job": job, "sources": partition_units(sources), "tasks": len(units),
                                      "rows": sum(int(e.get("rows", 0)) for _, e in sources)})

    def apply(self, ctx, plan):
        import ray

        job, sources = plan.worker_args["job"], plan.worker_args["sources"]
        config = ctx.config
        dedup = None
        if config.curate.dedup:
            # pass 1: each partition's own near-duplicates, and 16 bytes per band of every other row
            keys = items(sources).map_batches(bounded_task(dedup_keys_batch, "curation (dedup keys)"),
                                              fn_kwargs={"job": job}, batch_size=1, batch_format="numpy",
                                              **cpu_task_kwargs(config, len(sources))).materialize()
            shuffled = {"band_rows": keys.count(), "shuffle_bytes": keys.size_bytes()}  # block metadata only
            # every row of an LSH bucket in one block (a hash shuffle of the keys), star edges across partitions
            blocks = shuffle_blocks(plan.worker_args["rows"], dedup_bands(config.curate)[0])
            edges = keys.repartition(blocks, keys=["band"]).map_batches(
                cross_partition_edges, batch_size=None, batch_format="numpy",
                **cpu_task_kwargs(config, blocks)).materialize()
            # their components in one task, which writes the removal files: only counts come back
            dedup = ray.get(ray.remote(resolve_duplicates).options(
                num_cpus=config.resources.cpu.num_cpus_per_worker, max_retries=TASK_MAX_RETRIES).remote(
                dedup_folder(job), sources, *edges.to_arrow_refs()))
            storage.write_text(storage.join(dedup_folder(job), "summary.json"), json.dumps({**dedup, **shuffled}))
            logger.info("dedup: %d (band, id) rows shuffled (%d bytes), %d cross-partition edges, %d rows dropped "
                        "across partitions", shuffled["band_rows"], shuffled["shuffle_bytes"], dedup["edges"],
                        dedup["dropped"])
        return plan.dataset.map_batches(bounded_task(commit_batch, "curation"),
                                        fn_kwargs={"job": job, "dedup": dedup}, batch_size=1,
                                        **cpu_task_kwargs(config, plan.worker_args["tasks"]))
