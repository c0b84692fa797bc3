"""The echo engine (engines/echo.py): instant, deterministic answers for tests and dry runs of the plumbing."""

from __future__ import annotations

from ray_entigraph.config import load_config
from ray_entigraph.engines import GenerationRequest, SamplingParams, make_engine


def _req(key):
    return GenerationRequest(key=key, messages=[{"role": "user", "content": key}],
                             sampling=SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=16,
                                                     repetition_penalty=1.0), prefix_key="A")


def test_echo_engine_answers_instantly_and_deterministically():
    engine = make_engine(load_config(None, ["engine.kind=echo"]))
    reqs = [_req("k1"), _req("k2")]
    first, second = engine.generate(reqs), engine.generate(reqs)
    assert [r.key for r in first] == ["k1", "k2"]
    assert [r.text for r in first] == [r.text for r in second] and all(r.text.strip() for r in first)
    assert all(r.num_generated_tokens > 0 and r.error is None for r in first)
