"""Document-prefix reuse in the transformers engine: the same tokens as without it, the prefix computed once."""

from __future__ import annotations

import pytest

from ray_entigraph.config import EngineConfig, ModelConfig
from ray_entigraph.engines import GenerationRequest, SamplingParams
from ray_entigraph.engines.transformers_engine import TransformersEngine

pytestmark = pytest.mark.timeout(300)


def _requests(doc: str, n: int, temperature: float = 0.0) -> list[GenerationRequest]:
    # own parts of different lengths, so that rows are padded between the shared prefix and their own tokens
    return [GenerationRequest(
        key=f"k{i}", seed=i, prefix_key="doc", response_prefix="Answer:",
        messages=[{"role": "system", "content": "You explain documents."},
                  {"role": "user", "content": doc + "\nWrite about " + " and ".join(["the guild"] * (i % 3 + 1))}],
        sampling=SamplingParams(temperature=temperature, top_p=1.0, max_new_tokens=12, repetition_penalty=1.1),
    ) for i in range(n)]


def test_prefix_reuse_generates_the_same_tokens_and_reports_cached_prompt(tiny_model_dir, demo_docs):
    doc = demo_docs[0]["article"]
    engines = {reuse: TransformersEngine(ModelConfig(name=tiny_model_dir, dtype="float32"),
                                         EngineConfig(device="cpu", max_batch_size=3, prefix_reuse=reuse,
                                                      min_prefix_tokens=16)) for reuse in (False, True)}
    plain, reused = (engines[r].generate(_requests(doc, 7)) for r in (False, True))
    assert [r.key for r in reused] == [f"k{i}" for i in range(7)]
    assert [r.text for r in reused] == [r.text for r in plain]  # greedy: identical tokens, across 3 batches
    assert [r.num_generated_tokens for r in reused] == [r.num_generated_tokens for r in plain]
    assert all(r.num_cached_tokens == 0 for r in plain)
    prompt = reused[0].num_prompt_tokens
    # the first request computes the document prefix, the other six read it from the cache
    assert reused[0].num_cached_tokens == 0
    assert all(prompt * 0.8 < r.num_cached_tokens < r.num_prompt_tokens for r in reused[1:])


def test_prefix_reuse_is_skipped_for_short_prefixes_and_mixed_documents(tiny_model_dir):
    engine = TransformersEngine(ModelConfig(name=tiny_model_dir, dtype="float32"),
                                EngineConfig(device="cpu", max_batch_size=4, min_prefix_tokens=64))
    short = _requests("A short note.", 3)
    assert all(r.num_cached_tokens == 0 and r.error is None for r in engine.generate(short))
    other = [GenerationRequest(key=r.key + "-b", messages=r.messages, sampling=r.sampling, prefix_key="other")
             for r in _requests("x " * 200, 1)]
    results = engine.generate(_requests("y " * 200, 1) + other)  # one request per document: nothing to share
    assert [r.num_cached_tokens for r in results] == [0, 0]


def test_a_json_schema_constrains_even_a_random_model_and_prefix_reuse_keeps_it(tiny_model_dir):
    import json

    from ray_entigraph.text.parse import EXTRACTION_SCHEMA

    engine = TransformersEngine(ModelConfig(name=tiny_model_dir, dtype="float32"),
                                EngineConfig(device="cpu", max_batch_size=2, min_prefix_tokens=16))
    assert engine.supports_json_schema
    reqs = [GenerationRequest(key=f"k{i}", seed=i, prefix_key="doc", json_schema=EXTRACTION_SCHEMA,
                              messages=[{"role": "user", "content": "Entities of: Mara Vell founded the guild. " * 8
                                         + f"Answer {i}."}],
                              sampling=SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=48,
                                                      repetition_penalty=1.0))
            for i in range(3)]
    free = [GenerationRequest(key="free", messages=reqs[0].messages, sampling=reqs[0].sampling)]
    results = engine.generate(reqs + free)
    for res in results[:3]:
        # the random model's text always follows the schema: a complete object, or one cut short by the budget
        assert res.text.startswith("{") and res.error is None
        if res.finish_reason == "stop":
            assert set(json.loads(res.text)) == {"entities", "summary"}
    assert not results[3].text.lstrip().startswith("{")  # the same model, unconstrained: anything at all
