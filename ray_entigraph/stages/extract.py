"""Extract: one request per document for a summary and its salient entities (EntiGraph step 1).

Bounded attempts per document (the first at the configured sampling, later ones sampled), a lenient
parser, entities grounded in the document, and an optional heuristic fallback. A document that still has
no entities is recorded with its reason in the errors table; nothing raises.
"""

from __future__ import annotations

import time

from ray_entigraph import schema, storage
from ray_entigraph.config import EntiGraphConfig
from ray_entigraph.engines import GenerationRequest, constrains_json, make_engine, sampling_params
from ray_entigraph.prompts import load_prompt_set, render_chat
from ray_entigraph.stages.common import USAGE_FIELDS, commit_unit, shard_identity, torch_threads_for
from ray_entigraph.text.identity import derive_seed, request_key
from ray_entigraph.text.parse import EXTRACTION_SCHEMA, ground_entities, heuristic_entities, parse_extraction

KIND = "extract"


def extraction_key(config: EntiGraphConfig, doc_id: str) -> str:
    return request_key(
        doc_id=doc_id,
        kind=KIND,
        entities=(),
        prompt_version=load_prompt_set(config.synthesis.prompts).version,
        model=config.model.name,
        sampling={**config.extract.sampling.key(), "max_attempts": config.extract.max_attempts,
                  "fallback": config.extract.fallback, "max_entities": config.extract.max_entities,
                  **({"json_schema": True} if constrains_json(config) else {})},
        seed=config.seed,
    )


def retry_sampling(base, attempt: int):
    """Attempt 0 uses the configured sampling; retries sample (greedy would repeat the same output)."""
    if attempt == 0 or base.temperature > 0:
        return base
    return type(base)(temperature=0.7, top_p=0.95, max_new_tokens=base.max_new_tokens, repetition_penalty=base.repetition_penalty)


class EntityExtractionStage:
    """Ray Data callable: documents -> entities rows, one committed shard per call."""

    def __init__(self, config_json: str):
        self.config = EntiGraphConfig.model_validate_json(config_json)
        self.config.engine.torch_threads = torch_threads_for(self.config)
        self.engine = make_engine(self.config)
        self.prompts = load_prompt_set(self.config.synthesis.prompts)
        if self.prompts.extract is None:
            raise ValueError(f"Prompt set {self.config.synthesis.prompts!r} has no `extract` template.")
        self.store = storage.StageStore(self.config.output_dir, schema.EXTRACT)

    def __call__(self, batch):
        started = time.time()
        cfg = self.config.extract
        docs = batch.select(["doc_id", "title", "text", "request_key"]).to_pylist()
        state = {d["doc_id"]: {"attempts": 0, "parsed": None, "raw": "", "dropped": 0} for d in docs}
        usage = dict.fromkeys(USAGE_FIELDS, 0)
        pending = list(docs)
        base = sampling_params(cfg.sampling)
        template = self.prompts.extract
        # With constrained decoding the grammar writes the whole object: no prefill then.
        structured = constrains_json(self.config)
        assert structured == self.engine.supports_json_schema, "constrains_json and the engine disagree"
        prefix = "" if structured else template.response_prefix
        for attempt in range(cfg.max_attempts):
            if not pending:
                break
            requests = [
                GenerationRequest(
                    key=d["doc_id"],
                    messages=render_chat(template, {"title": d["title"], "document": d["text"]}),
                    sampling=retry_sampling(base, attempt),
                    seed=derive_seed(self.config.seed, d["doc_id"], KIND, attempt),
                    prefix_key=d["doc_id"],
                    response_prefix=prefix,
                    json_schema=EXTRACTION_SCHEMA if structured else None,
                )
                for d in pending
            ]
            results = self.engine.generate(requests)
            still = []
            for d, res in zip(pending, results):
                st = state[d["doc_id"]]
                st["attempts"] += 1
                for k in usage:
                    usage[k] += getattr(res, k)
                if res.error:
                    st["raw"], st["reason"] = "", res.error
                    still.append(d)
                    continue
                raw = prefix + res.text
                parsed = parse_extraction(raw, cfg.max_entities)
                if cfg.require_entities_in_document and parsed.entities:
                    parsed.entities, st["dropped"] = ground_entities(parsed.entities, d["text"])
                st["raw"] = raw
                if len(parsed.entities) >= cfg.min_entities:
                    st["parsed"] = parsed
                else:
                    st["reason"] = parsed.error or f"only {len(parsed.entities)} entities found in the document"
                    st["summary"] = st.get("summary") or parsed.summary
                    still.append(d)
            pending = still
        rows, errors = [], []
        for d in docs:
            st = state[d["doc_id"]]
            parsed = st["parsed"]
            row = {
                "request_key": d["request_key"], "doc_id": d["doc_id"], "title": d["title"], "text": d["text"],
                "num_attempts": st["attempts"], "raw_output": st["raw"], "model": self.engine.model_name,
                "prompt_version": self.prompts.version, "num_entities_dropped": st["dropped"],
            }
            if parsed is not None:
                rows.append({**row, "summary": parsed.summary, "entities": parsed.entities,
                             "entities_source": "model", "parse_how": parsed.how})
                continue
            fallback = heuristic_entities(d["text"], cfg.max_entities) if cfg.fallback == "heuristic" else []
            if len(fallback) >= cfg.min_entities:
                rows.append({**row, "summary": st.get("summary"), "entities": fallback,
                             "entities_source": "heuristic", "parse_how": "failed"})
            else:
                errors.append({"stage": schema.EXTRACT, "request_key": d["request_key"], "doc_id": d["doc_id"],
                               "error": f"extraction failed after {st['attempts']} attempts: {st.get('reason')}"})
        return commit_unit(self.store, rows, errors, key_column="request_key", started=started, usage=usage,
                           identity=shard_identity(self.config, self.prompts.version))
