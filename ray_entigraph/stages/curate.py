"""Curate: the synthetic corpus scored against its documents, filtered and deduplicated, as a new dataset.

Every synthetic row gets a grounding score (`text/grounding.py`: the share of its entities, numbers and
content words that its source document contains, per sentence and overall). Then, as configured
(`curate.*`): sentences below a threshold are removed (repair), rows below a threshold are dropped, and
near-duplicate rows are dropped (`text/dedup.py`: MinHash signatures and LSH band keys computed in parallel
per shard, candidate pairs found by a Ray Data groupby on band keys, the few pairs clustered on the driver).

The output is a derived dataset, `output_dir/curated/<curation id>/`, one shard per synthetic shard,
committed with the same protocol as every stage; every dropped row is recorded with its reason in
`errors/curated/<curation id>/`. The synthetic stage's shards are never changed. The curation id hashes the
curate settings and the synthetic shards it reads, so other settings or a grown corpus give a new dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import pyarrow as pa

from ray_entigraph import schema, storage
from ray_entigraph.config import CurateConfig, EntiGraphConfig

# -- pure pieces ---------------------------------------------------------------------------------------


def curation_id(config: EntiGraphConfig, shard_names: list[str]) -> str:
    blob = json.dumps({"curate": config.curate.identity(), "shards": sorted(shard_names)}, sort_keys=True)
    return hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()


def curated_stage(config: EntiGraphConfig) -> str:
    """The stage folder (`curated/<id>`) of the curated dataset for the current config and synthetic corpus."""
    shards = [e["shard"] for e in storage.StageStore(config.output_dir, schema.SYNTHESIZE).manifest_entries()
              if e.get("rows", 0) > 0]
    return f"{schema.CURATE}/{curation_id(config, shards)}"


def forced_prefix(prompts, row: dict) -> str:
    """The part of a row's text that the prompt wrote (the response prefix), not the model: not scored."""
    from ray_entigraph.prompts import render
    from ray_entigraph.stages.synthesize import prompt_values, template_for

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
    from ray_entigraph.text.grounding import drop_unsupported_sentences, score_text

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
            "unsupported": score.unsupported, "num_sentences_dropped": num_dropped, "judge_score": judge_score}, None, None


# -- Ray Data tasks ------------------------------------------------------------------------------------


def _load_shard(url: str, doc_index: dict[str, str], config: EntiGraphConfig):
    """The shard's rows and a grounding index per document they come from."""
    from ray_entigraph.prompts import load_prompt_set
    from ray_entigraph.text.grounding import DocumentIndex

    rows = storage.read_parquet(url).to_pylist()
    wanted = {r["doc_id"] for r in rows}
    indexes = {}
    for doc_url in sorted({doc_index[d] for d in wanted if d in doc_index}):
        for doc in storage.read_parquet(doc_url, ["doc_id", "title", "text"]).to_pylist():
            if doc["doc_id"] in wanted:
                # the title counts as the document's: relation texts name it by design
                indexes[doc["doc_id"]] = DocumentIndex.from_text(doc["text"], title=doc["title"] or "")
    return rows, indexes, load_prompt_set(config.synthesis.prompts)


def _curated_rows(url: str, doc_index: dict[str, str], config: EntiGraphConfig):
    """Yield (row, curated row or None, drop category, drop reason) for every row of a synthetic shard."""
    from ray_entigraph.stages.judge import judge_scores, shard_name

    rows, indexes, prompts = _load_shard(url, doc_index, config)
    scores = judge_scores(config, shard_name(url)) if config.curate.judge else {}
    for row in rows:
        index = indexes.get(row["doc_id"])
        if index is None:
            yield row, None, "document", "source document not found among the current input's documents"
            continue
        yield row, *curate_row(row, index, config.curate, forced_prefix(prompts, row), scores.get(row["task_id"]))


def signatures_batch(batch: dict, *, config_json: str, doc_index: dict[str, str]) -> dict:
    """Pass 1 (dedup): one row per (LSH band key, kept synthetic row), with the row's MinHash signature."""
    from ray_entigraph.text.dedup import band_keys, lsh_params, signature

    config = EntiGraphConfig.model_validate_json(config_json)
    cfg = config.curate
    # weighted toward recall: a missed pair keeps a duplicate, an extra candidate costs one comparison
    bands, rows_per_band = lsh_params(cfg.dedup_threshold, cfg.num_perm, false_positive_weight=0.2,
                                      false_negative_weight=0.8)
    out: dict[str, list] = {"band": [], "task_id": [], "signature": []}
    for url in batch["url"]:
        for _, row, _, _ in _curated_rows(str(url), doc_index, config):
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

    from ray_entigraph.text.dedup import SIGNATURE_DTYPE, bucket_pairs

    ids = group.column("task_id").to_pylist()
    sigs = [np.frombuffer(b, dtype=SIGNATURE_DTYPE) for b in group.column("signature").to_pylist()]
    pairs = [(min(x, y), max(x, y), s) for x, y, s in bucket_pairs(ids, sigs) if x != y]
    a, b, sim = ([p[i] for p in pairs] for i in range(3))
    return pa.table({"a": pa.array(a, pa.string()), "b": pa.array(b, pa.string()), "similarity": pa.array(sim, pa.float64())})


def commit_batch(batch: dict, *, config_json: str, doc_index: dict[str, str], duplicates: dict[str, str],
                 stage: str) -> pa.Table:
    """Pass 2: curate one synthetic shard, drop the duplicates, commit the curated shard and its drop log."""
    from ray_entigraph.stages.common import manifest_row_table, ray_node_id

    config = EntiGraphConfig.model_validate_json(config_json)
    store = storage.StageStore(config.output_dir, stage)
    entries = []
    for url in batch["url"]:
        started = time.time()
        kept, dropped = [], []
        reasons = {"grounding": 0, "judge": 0, "duplicate": 0, "short": 0, "document": 0}
        for row, out, category, reason in _curated_rows(str(url), doc_index, config):
            if out is not None and row["task_id"] in duplicates:
                category, reason, out = "duplicate", f"near-duplicate of {duplicates[row['task_id']]}", None
            if out is None:
                dropped.append({"stage": schema.CURATE, "request_key": row["task_id"], "doc_id": row["doc_id"],
                                "error": reason})
                reasons[category] += 1
            else:
                kept.append(out)
        name = storage.posixpath.basename(str(url)).removesuffix(".parquet")
        entry = store.commit(
            schema.rows_to_table(kept, schema.CURATED),
            schema.rows_to_table(dropped, schema.ERRORS) if dropped else None,
            keys=[name, stage],
            stats={"source_shard": name, "num_ok": len(kept), "num_failed": 0, "num_dropped": len(dropped),
                   **{f"num_dropped_{k}": v for k, v in reasons.items()},
                   "num_sentences_dropped": sum(r["num_sentences_dropped"] for r in kept),
                   "mean_grounding": (sum(r["grounding"] for r in kept) / len(kept)) if kept else None,
                   "wall_s": round(time.time() - started, 3), "host": os.uname().nodename,
                   "node_id": ray_node_id()},
        )
        entries.append(entry)
    return manifest_row_table(entries)
