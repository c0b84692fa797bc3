"""Judge: a model rates every synthetic row against its source document (`curate.judge`), the model-based
grounding check beside the lexical one of `text/grounding.py`.

The judge prompt (`judge-v1`) puts the document first and the text after it, so the rows of one document
share their long prefix; the answer is a rating from 1 to 5, stored as `judge_score = (rating - 1) / 4`.
Engines that decode under a JSON schema (vLLM, OpenAI-compatible servers) are held to `{"rating": 1..5}`;
others get a "Rating: " prefill and the first digit from 1 to 5 of the answer. An answer with no rating is
recorded in the errors table with the answer itself, never guessed.

One judged shard per synthetic shard, committed with the same protocol as every stage, under
`output_dir/judged/<judge id>/`; the judge id hashes the judge model, its prompt version and whether the
answer was constrained, so another judge never reuses these ratings. The curate stage reads them by
synthetic shard name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time

from ray_entigraph import schema, storage
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.engines import GenerationRequest, GenerationResult, SamplingParams, constrains_json, make_engine
from ray_entigraph.prompts import ChatTemplate, render, render_chat

RATING_SCHEMA = {"type": "object", "properties": {"rating": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
                 "required": ["rating"], "additionalProperties": False}
# Greedy: a rating is a judgment, not a sample. A few tokens leave room for "4/5" or `{"rating": 4}`.
JUDGE_SAMPLING = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=12, repetition_penalty=1.0)
_DIGIT = re.compile(r"(?<![\d.])([1-5])(?!\d|\.\d)")  # "4", "4/5", "1. The text" but not "2.5" or "10"


# -- pure pieces ---------------------------------------------------------------------------------------


def judge_config(config: EntiGraphConfig) -> EntiGraphConfig:
    """The config a judge actor runs: the generator's engine settings with the judge's model."""
    if not config.curate.judge_model:
        return config
    return config.model_copy(update={"model": config.model.model_copy(update={"name": config.curate.judge_model})})


def judge_stage(config: EntiGraphConfig) -> str:
    """The stage folder (`judged/<id>`) of the current judge's ratings."""
    from ray_entigraph.prompts import load_prompt_set

    cfg = judge_config(config)
    blob = json.dumps({"model": cfg.model.name, "prompts": load_prompt_set(config.curate.judge_prompts).version,
                       "constrained": constrains_json(cfg), "sampling": JUDGE_SAMPLING.as_dict()}, sort_keys=True)
    return f"{schema.JUDGE}/{hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()}"


def judge_template(config: EntiGraphConfig) -> ChatTemplate:
    from ray_entigraph.prompts import load_prompt_set

    prompts = load_prompt_set(config.curate.judge_prompts)
    if prompts.judge is None:
        raise ValueError(f"Prompt set {config.curate.judge_prompts!r} has no `judge` template. Fix: set "
                         "curate.judge_prompts to judge-v1 or to a YAML file with a `judge` section.")
    return prompts.judge


def judge_request(template: ChatTemplate, row: dict, document: dict, *, constrained: bool) -> GenerationRequest:
    """The judge's request for one synthetic row; the document is the prefix key (shared prompt prefix)."""
    values = {"title": document.get("title") or "", "document": document["text"], "text": row["text"]}
    return GenerationRequest(
        key=row["task_id"], messages=render_chat(template, values), sampling=JUDGE_SAMPLING, seed=0,
        prefix_key=row["doc_id"], response_prefix="" if constrained else render(template.response_prefix, values),
        json_schema=RATING_SCHEMA if constrained else None,
    )


def parse_rating(text: str) -> int | None:
    """The rating in a judge's answer: `{"rating": n}`, or the first standalone digit 1..5; None otherwise."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped).get("rating")
        except (json.JSONDecodeError, AttributeError):
            value = None
        if isinstance(value, int) and 1 <= value <= 5:
            return value
    m = _DIGIT.search(stripped)
    return int(m.group(1)) if m else None


def judge_score(rating: int) -> float:
    return (rating - 1) / 4


def judged_row(row: dict, result: GenerationResult, model: str, prompt_version: str) -> tuple[dict | None, str | None]:
    """(judged row, None) or (None, why there is no rating)."""
    if result.error:
        return None, result.error
    rating = parse_rating(result.text)
    if rating is None:
        return None, f"no rating from 1 to 5 in the judge's answer: {result.text.strip()[:200]!r}"
    return {"task_id": row["task_id"], "doc_id": row["doc_id"], "judge_model": model, "prompt_version": prompt_version,
            "rating": rating, "judge_score": judge_score(rating), "judge_text": result.text,
            "num_prompt_tokens": result.num_prompt_tokens, "num_cached_tokens": result.num_cached_tokens,
            "num_generated_tokens": result.num_generated_tokens}, None


def shard_name(url: str) -> str:
    return storage.posixpath.basename(str(url)).removesuffix(".parquet")


def judge_scores(config: EntiGraphConfig, synthetic_shard: str) -> dict[str, float]:
    """task_id -> judge score of one synthetic shard's rows (rows the judge could not rate are absent)."""
    store = storage.StageStore(config.output_dir, judge_stage(config))
    scores: dict[str, float] = {}
    for entry in store.manifest_entries():
        if entry.get("source_shard") == synthetic_shard and entry.get("rows"):
            table = storage.read_parquet(storage.join(store.url, entry["file"]), ["task_id", "judge_score"])
            scores.update(zip(table.column("task_id").to_pylist(), table.column("judge_score").to_pylist()))
    return scores


# -- Ray Data callable ---------------------------------------------------------------------------------


class JudgeStage:
    """Ray Data callable on an actor pool: synthetic shard URLs -> one committed judged shard each."""

    def __init__(self, config_json: str, doc_index: dict[str, str]):
        from ray_entigraph.prompts import load_prompt_set
        from ray_entigraph.stages.common import torch_threads_for

        self.config = judge_config(EntiGraphConfig.model_validate_json(config_json))
        self.config.engine.torch_threads = torch_threads_for(self.config)
        self.template = judge_template(self.config)
        self.prompt_version = load_prompt_set(self.config.curate.judge_prompts).version
        self.engine = make_engine(self.config)
        self.constrained = constrains_json(self.config)
        assert self.constrained == self.engine.supports_json_schema, "constrains_json and the engine disagree"
        self.doc_index = doc_index
        self.store = storage.StageStore(self.config.output_dir, judge_stage(self.config))

    def _documents(self, doc_ids: set[str]) -> dict[str, dict]:
        docs = {}
        for url in sorted({self.doc_index[d] for d in doc_ids if d in self.doc_index}):
            for doc in storage.read_parquet(url, ["doc_id", "title", "text"]).to_pylist():
                if doc["doc_id"] in doc_ids:
                    docs[doc["doc_id"]] = doc
        return docs

    def __call__(self, batch: dict):
        from ray_entigraph.stages.common import USAGE_FIELDS, manifest_row_table, ray_node_id

        entries = []
        for url in batch["url"]:
            started = time.time()
            rows = storage.read_parquet(str(url), ["task_id", "doc_id", "text"]).to_pylist()
            docs = self._documents({r["doc_id"] for r in rows})
            judged, errors, requests, by_key = [], [], [], {}
            for row in rows:
                if row["doc_id"] not in docs:
                    errors.append({"stage": schema.JUDGE, "request_key": row["task_id"], "doc_id": row["doc_id"],
                                   "error": "source document not found among the current input's documents"})
                    continue
                requests.append(judge_request(self.template, row, docs[row["doc_id"]], constrained=self.constrained))
                by_key[row["task_id"]] = row
            usage = dict.fromkeys(USAGE_FIELDS, 0)
            for result in self.engine.generate(requests):
                for k in usage:
                    usage[k] += getattr(result, k)
                row = by_key[result.key]
                out, reason = judged_row(row, result, self.engine.model_name, self.prompt_version)
                if out is None:
                    errors.append({"stage": schema.JUDGE, "request_key": row["task_id"], "doc_id": row["doc_id"],
                                   "error": reason})
                else:
                    judged.append(out)
            name = shard_name(url)
            entries.append(self.store.commit(
                schema.rows_to_table(judged, schema.JUDGED),
                schema.rows_to_table(errors, schema.ERRORS) if errors else None,
                keys=[name, self.store.stage],
                stats={"source_shard": name, "num_ok": len(judged), "num_failed": len(errors),
                       "mean_judge_score": (sum(r["judge_score"] for r in judged) / len(judged)) if judged else None,
                       "wall_s": round(time.time() - started, 3), "host": os.uname().nodename,
                       "node_id": ray_node_id(), **usage},
            ))
        return manifest_row_table(entries)
