"""Curate: the synthetic corpus scored against its documents, filtered and deduplicated, as a new dataset.

Every synthetic row gets a grounding score (`text/grounding.py`: the share of its entities, numbers and
content words that its source document contains, per sentence and overall). Then, as configured
(`curate.*`): sentences below a threshold are removed (repair), rows below a threshold are dropped, and
near-duplicate rows are dropped (`text/dedup.py`: MinHash signatures and LSH band keys computed in parallel
per partition, candidate pairs found by a Ray Data groupby on band keys, the few pairs clustered on the
driver). Each task takes one partition: it reads that partition's documents once (a synthetic row's document
is in the row's own partition), then curates each of the partition's synthetic shards.

The output is a derived dataset, `output_dir/curated/<curation id>/`, one shard per synthetic shard,
committed with the same protocol as every stage; every dropped row is recorded with its reason in
`errors/curated/<curation id>/`. The synthetic stage's shards are never changed. The curation id hashes the
curate settings and the synthetic shards it reads, so other settings or a grown corpus give a new dataset.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pyarrow as pa

from ray_entigraph import schema, storage
from ray_entigraph.config import CurateConfig, EntiGraphConfig
from ray_entigraph.corpus import Corpus, documents_by_id, synthetic_shards
from ray_entigraph.layout import Layout, shard_basename
from ray_entigraph.ledger import StageTotals
from ray_entigraph.prompts import PromptSet, render
from ray_entigraph.stages.base import Stage, StagePlan, bounded_task, commit_unit, error_row, items
from ray_entigraph.stages.synthesize import prompt_values, template_for
from ray_entigraph.text.dedup import SIGNATURE_DTYPE, band_keys, bucket_pairs, duplicates_to_drop, lsh_params, signature
from ray_entigraph.text.grounding import DocumentIndex, drop_unsupported_sentences, score_text

DROP_CATEGORIES = ("grounding", "judge", "duplicate", "short", "document")
# Dedup's LSH bands weigh a missed pair (a duplicate kept) above an extra candidate (one comparison more).
LSH_FALSE_POSITIVE_WEIGHT, LSH_FALSE_NEGATIVE_WEIGHT = 0.2, 0.8

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
               judge_score: float | None = None) -> tuple[dict | None, str | None, str | None]:
    """(the curated row, None, None) or (None, drop category, why it was dropped). `judge_score`: the judge
    model's score of the row (curate.judge), None where it gave none."""
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


def partition_units(sources: list[tuple[str, dict]], judged: dict[str, list[str]] | None = None) -> list[dict]:
    """The units of a curate pass: one per partition, naming its synthetic shards and, with the judge, each
    shard's judged files (read once by the driver's plan, so no task lists the judge's markers)."""
    by_partition: dict[int, list[dict]] = {}
    for url, entry in sources:
        by_partition.setdefault(int(entry["partition"]), []).append(
            {"url": url, "judged": (judged or {}).get(entry["shard"], [])})
    return [{"partition": p, "shards": json.dumps(shards)} for p, shards in sorted(by_partition.items())]


def _shard_scores(judged_files: list[str]) -> dict[str, float]:
    scores: dict[str, float] = {}
    for url in judged_files:
        table = storage.read_parquet(url, ["task_id", "judge_score"])
        scores.update(zip(table.column("task_id").to_pylist(), table.column("judge_score").to_pylist()))
    return scores


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
                               scores.get(row["task_id"]))


def signatures_batch(batch: dict, *, job: CurateJob) -> dict:
    """Pass 1 (dedup), one partition per call: one row per (LSH band key, kept synthetic row), with the row's
    MinHash signature."""
    cfg = job.config.curate
    bands, rows_per_band = lsh_params(cfg.dedup_threshold, cfg.num_perm,
                                      false_positive_weight=LSH_FALSE_POSITIVE_WEIGHT,
                                      false_negative_weight=LSH_FALSE_NEGATIVE_WEIGHT)
    out: dict[str, list] = {"band": [], "task_id": [], "signature": []}
    for p, shards in zip(batch["partition"], batch["shards"]):
        docs = _PartitionDocuments(job.corpus, int(p))
        for shard in json.loads(str(shards)):
            for _, row, _, _ in _curated_rows(shard["url"], job, docs, _shard_scores(shard["judged"])):
                if row is None:
                    continue
                sig = signature(row["text"], num_perm=cfg.num_perm, ngram=cfg.ngram)
                for key in band_keys(sig, bands=bands, rows=rows_per_band):
                    out["band"].append(key)
                    out["task_id"].append(row["task_id"])
                    out["signature"].append(sig.tobytes())
    return out


def candidate_pairs(group: pa.Table) -> pa.Table:
    """Pass 1, per LSH bucket: every pair of rows sharing the band key, with their estimated Jaccard."""
    import numpy as np

    ids = group.column("task_id").to_pylist()
    sigs = [np.frombuffer(b, dtype=SIGNATURE_DTYPE) for b in group.column("signature").to_pylist()]
    pairs = [(min(x, y), max(x, y), s) for x, y, s in bucket_pairs(ids, sigs) if x != y]
    a, b, sim = ([p[i] for p in pairs] for i in range(3))
    return pa.table({"a": pa.array(a, pa.string()), "b": pa.array(b, pa.string()),
                     "similarity": pa.array(sim, pa.float64())})


def commit_batch(batch: dict, *, job: CurateJob, duplicates: dict[str, str]) -> pa.Table:
    """Pass 2, one partition per call: its documents read once, then each of its synthetic shards curated,
    its duplicates dropped, and committed as a curated shard with its drop log."""
    store = job.layout.store(job.stage)
    tables = []
    for p, shards in zip(batch["partition"], batch["shards"]):
        docs = _PartitionDocuments(job.corpus, int(p))
        for shard in json.loads(str(shards)):
            url = shard["url"]
            started = time.time()
            kept, dropped = [], []
            reasons = dict.fromkeys(DROP_CATEGORIES, 0)
            scores = _shard_scores(shard["judged"])
            for row, out, category, reason in _curated_rows(url, job, docs, scores):
                if out is not None and row["task_id"] in duplicates:
                    category, reason, out = "duplicate", f"near-duplicate of {duplicates[row['task_id']]}", None
                if out is None:
                    dropped.append(error_row(schema.CURATE, row["task_id"], row["doc_id"], reason))
                    reasons[category] += 1
                else:
                    kept.append(out)
            name = shard_basename(url)
            stats = {"source_shard": name, "num_dropped": len(dropped), "judge_rated": len(scores),
                     **{f"num_dropped_{k}": v for k, v in reasons.items()},
                     "num_sentences_dropped": sum(r["num_sentences_dropped"] for r in kept),
                     "mean_grounding": (sum(r["grounding"] for r in kept) / len(kept)) if kept else None}
            # drops are not failures: they go to the errors table, but num_failed stays 0
            tables.append(commit_unit(store, kept, [], row_schema=schema.CURATED, key_column=None, started=started,
                                      stats=stats, name_keys=[name, job.stage], drops=dropped))
    return pa.concat_tables(tables)


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
        sources = synthetic_shards(ctx.corpus())
        judged = None  # with the judge: each synthetic shard's judged files, from one read of its markers
        rated = None  # a shard curated before the judge rated more of its rows (a re-run after an outage) is redone
        if ctx.config.curate.judge:
            judge_store = storage.StageStore(ctx.config.output_dir, ctx.judge_stage)
            judged, rated = {}, {}
            for e in judge_store.manifest_entries():
                shard = e.get("source_shard")
                rated[shard] = int(e.get("num_ok", 0))
                if e.get("rows"):
                    judged.setdefault(shard, []).append(storage.join(judge_store.url, e["file"]))
        done = {e.get("source_shard") for e in storage.StageStore(ctx.config.output_dir, stage).manifest_entries()
                if rated is None or int(e.get("judge_rated", -1)) == rated.get(e.get("source_shard"), 0)}
        todo = [(u, e) for u, e in sources if shard_basename(u) not in done]
        totals = StageTotals(stage, expected=len(sources), done_before=len(sources) - len(todo))
        if not todo:
            return StagePlan(totals)
        job = CurateJob(ctx.config, ctx.prompts, ctx.corpus(), stage, ctx.layout)
        return StagePlan(totals, dataset=items(partition_units(todo, judged)), units=len(todo), unit="shards",
                         per_row_units=1, worker_args={"job": job, "sources": partition_units(sources, judged)})

    def apply(self, ctx, plan):
        job, sources = plan.worker_args["job"], plan.worker_args["sources"]
        duplicates: dict[str, str] = {}
        if ctx.config.curate.dedup:
            # every partition's signatures (dedup is corpus-wide), bucketed by LSH band key
            bands = items(sources).map_batches(
                bounded_task(signatures_batch, "curation (signatures)"), fn_kwargs={"job": job}, batch_size=1,
                num_cpus=1)
            pairs = bands.groupby("band").map_groups(candidate_pairs, batch_format="pyarrow")
            duplicates = duplicates_to_drop(((r["a"], r["b"], r["similarity"]) for r in pairs.iter_rows()),
                                            ctx.config.curate.dedup_threshold)
        return plan.dataset.map_batches(bounded_task(commit_batch, "curation"),
                                        fn_kwargs={"job": job, "duplicates": duplicates}, batch_size=1, num_cpus=1)
