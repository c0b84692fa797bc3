"""How faithful a synthetic corpus is to its documents, and whether evaluation questions leaked into it:
mean grounding, the copy rate (share of 8-word spans found verbatim in the source), the share of rows that
loop, and the decontamination count, per partition (on a worker) and summed.

`partition_stats` reads one partition's current documents and synthetic rows (corpus.py) and returns sums, so
the driver adds a few numbers per partition and never holds a row. Pure apart from that read.
"""

from __future__ import annotations

from collections import Counter

from ray_entigraph.corpus import Corpus, read_documents, read_synthetic
from ray_entigraph.eval.quality import Question
from ray_entigraph.text.grounding import DocumentIndex, score_text
from ray_entigraph.text.output_filters import loops
from ray_entigraph.text.overlap import COPY_N, contaminated, copy_rate, ngrams, probes, words


def question_probes(questions: list[Question]) -> dict[str, list[tuple[str, ...]]]:
    return {q.qid: probes(q.question, q.options) for q in questions}


def partition_stats(corpus: Corpus, p: int, items: dict[str, list[tuple[str, ...]]] | None = None) -> dict:
    """Sums over partition p's current synthetic rows: rows, grounding, copy rate, looping rows, and the
    evaluation items whose probes occur in them ({qid: rows})."""
    from ray_entigraph.stages.curate import forced_prefix  # the prompt's own words are not the model's

    docs = {d["doc_id"]: d for d in read_documents(corpus, p, ["doc_id", "title", "text"])}
    rows = read_synthetic(corpus, p, ["doc_id", "text", "kind", "title", "entities"])
    out = {"rows": 0, "grounding_sum": 0.0, "copy_sum": 0.0, "copy_rows": 0, "loop_rows": 0, "contaminated": {}}
    indexes: dict[str, tuple[DocumentIndex, set]] = {}
    for row in rows:
        doc = docs.get(row["doc_id"])
        if doc is None:
            continue
        if row["doc_id"] not in indexes:
            indexes[row["doc_id"]] = (DocumentIndex.from_text(doc["text"], title=doc["title"]),
                                      ngrams(words(doc["text"]), COPY_N))
        index, grams = indexes[row["doc_id"]]
        prefix = forced_prefix(corpus.prompts, row)
        own = row["text"][len(prefix):] if prefix else row["text"]
        out["rows"] += 1
        out["grounding_sum"] += score_text(row["text"], index, skip_prefix=prefix).score
        rate = copy_rate(own, grams)
        if rate is not None:
            out["copy_sum"] += rate
            out["copy_rows"] += 1
        out["loop_rows"] += loops(own)
    if items:
        out["contaminated"] = contaminated(items, (r["text"] for r in rows))
    return out


def faithfulness_task(batch: dict, *, corpus: Corpus, items: dict | None) -> dict:
    """Ray Data task over partition ids: each partition's sums as JSON (`run_partition_tasks` runs it)."""
    import json

    return {"stats": [json.dumps(partition_stats(corpus, int(p), items)) for p in batch["partition"]]}


def corpus_faithfulness(corpus: Corpus, questions: list[Question]) -> dict:
    """The corpus's figures (`combine`), its partitions read on CPU tasks: the driver adds their sums."""
    import json

    from ray_entigraph.stages.base import run_partition_tasks  # Ray loads only when a corpus is measured

    rows = run_partition_tasks(corpus.num_partitions, faithfulness_task, corpus=corpus,
                               items=question_probes(questions))
    return combine([json.loads(r["stats"]) for r in rows])


def combine(parts: list[dict]) -> dict:
    """The corpus's figures from its partitions' sums: mean grounding, mean copy rate, loop share, and the
    number of evaluation questions found in any synthetic row."""
    rows = sum(p["rows"] for p in parts)
    copy_rows = sum(p["copy_rows"] for p in parts)
    hits: Counter = Counter()
    for p in parts:
        hits.update(p["contaminated"])
    return {"rows": rows,
            "mean_grounding": sum(p["grounding_sum"] for p in parts) / rows if rows else None,
            "copy_rate": sum(p["copy_sum"] for p in parts) / copy_rows if copy_rows else None,
            "loop_share": sum(p["loop_rows"] for p in parts) / rows if rows else None,
            "contaminated_questions": len(hits), "contaminated": dict(hits)}
