"""Column names and row schemas of every stage's output, in one place.

Each stage's committed shards are Parquet files with exactly these columns (pyarrow schemas below), so
`datasets.load_dataset("parquet", data_files=...)`, pandas and Ray Data all read them the same way.
"""

from __future__ import annotations

import pyarrow as pa

# Stage names double as folder names under output_dir.
INGEST = "documents"
EXTRACT = "entities"
SYNTHESIZE = "synthetic"
STAGES = (INGEST, EXTRACT, SYNTHESIZE)

# Kinds of synthetic rows.
KIND_SUMMARY = "summary"
KIND_PAIR = "pair"
KIND_TRIPLET = "triplet"
KIND_QA = "qa"  # a pair or triplet written as questions and answers (a prompt set's relation_qa)
KIND_REPHRASE_PREFIX = "rephrase:"
KIND_REWRITE_PREFIX = "rewrite:"  # the rewrite augmenter's formats (a prompt set's `rephrase` templates)

DOCUMENTS = pa.schema(
    [
        ("doc_id", pa.string()),  # hash of the normalised text: same text, same id, in every run
        ("title", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),  # file the document came from
        ("parent_doc_id", pa.string()),  # the unsplit document's id when this is a chunk, else = doc_id
        ("chunk_index", pa.int32()),
        ("num_chunks", pa.int32()),
        ("num_tokens", pa.int32()),
        ("metadata_json", pa.string()),  # every other input field, as JSON
        ("error", pa.string()),  # why this document cannot be used (empty, undecodable, ...), else null
    ]
)

ENTITIES = pa.schema(
    [
        ("request_key", pa.string()),
        ("doc_id", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),  # the document, so that planning and synthesis need no join
        ("summary", pa.string()),
        ("entities", pa.list_(pa.string())),
        ("entities_source", pa.string()),  # model | heuristic (fallback when the model's list did not parse)
        ("parse_how", pa.string()),  # json | repaired | salvaged | list | failed: how the model output parsed
        ("num_entities_dropped", pa.int32()),  # parsed but not found in the document
        ("num_attempts", pa.int32()),
        ("raw_output", pa.string()),  # the last model output, for auditing the parser
        ("model", pa.string()),
        ("prompt_version", pa.string()),
        ("num_prompt_tokens", pa.int64()),
        ("num_generated_tokens", pa.int64()),
        ("error", pa.string()),
    ]
)

SYNTHETIC = pa.schema(
    [
        ("task_id", pa.string()),  # the request key: same key, same request, done once
        ("doc_id", pa.string()),
        ("title", pa.string()),
        ("kind", pa.string()),  # summary | pair | triplet | rephrase:<style>
        ("entities", pa.list_(pa.string())),  # in prompt order
        ("text", pa.string()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),
        ("sampling_json", pa.string()),
        ("seed", pa.int64()),
        ("num_prompt_tokens", pa.int64()),
        ("num_cached_tokens", pa.int64()),
        ("num_generated_tokens", pa.int64()),
        ("finish_reason", pa.string()),  # stop | length
        ("error", pa.string()),
    ]
)

# The curated corpus (output_dir/curated/<curation id>/): synthetic rows that passed the filters, with their
# grounding scores against the source document. The synthetic stage's own shards are never changed.
CURATE = "curated"
CURATED = pa.schema(
    list(SYNTHETIC)
    + [
        ("grounding", pa.float32()),  # weighted share of the text's entities, numbers and words the document has
        ("sentence_grounding", pa.list_(pa.float32())),  # per sentence of the text as kept
        ("unsupported", pa.list_(pa.string())),  # units of the text the document does not contain (at most 20)
        ("num_sentences_dropped", pa.int32()),  # sentences removed by the sentence filter (repair)
        ("judge_score", pa.float32()),  # the judge model's rating scaled to [0, 1]; null without curate.judge
    ]
)

# Model-based grounding check (curate.judge): one rating per synthetic row, one shard per synthetic shard.
JUDGE = "judged"
PARTITIONED_STAGES = (*STAGES, JUDGE)  # stage folders whose shards live in p=NNNNN/ partitions
JUDGED = pa.schema(
    [
        ("task_id", pa.string()),
        ("doc_id", pa.string()),
        ("judge_model", pa.string()),
        ("prompt_version", pa.string()),
        ("rating", pa.int32()),  # 1 (mostly invented) .. 5 (every claim in the document)
        ("judge_score", pa.float32()),  # (rating - 1) / 4
        ("judge_text", pa.string()),  # the judge's raw answer
        ("num_prompt_tokens", pa.int32()),
        ("num_cached_tokens", pa.int32()),
        ("num_generated_tokens", pa.int32()),
    ]
)

ERRORS = pa.schema(
    [
        ("stage", pa.string()),
        ("request_key", pa.string()),
        ("doc_id", pa.string()),
        ("error", pa.string()),
    ]
)

SCHEMAS = {INGEST: DOCUMENTS, EXTRACT: ENTITIES, SYNTHESIZE: SYNTHETIC, CURATE: CURATED, JUDGE: JUDGED}


def empty_table(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Build a table with exactly `schema`'s columns (missing values become null)."""
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)

# Training blocks: fixed-length token sequences, one folder per source under train/blocks/.
BLOCKS = pa.schema([("input_ids", pa.list_(pa.int32()))])
SYNTHETIC_SOURCE = "synthetic"
REPLAY_PREFIX = "replay:"


def blocks_stage(source: str) -> str:
    """Stage folder of one training source's packed blocks ("replay:wiki" -> train/blocks/replay-wiki)."""
    return "train/blocks/" + source.replace(":", "-")
