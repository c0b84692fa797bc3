"""The synthesize stage's request building (stages/synthesize.py)."""

from ray_entigraph.engines import SamplingParams
from ray_entigraph.prompts import load_prompt_set
from ray_entigraph.stages.synthesize import relation_request


def test_a_focused_prompt_set_shows_only_the_passages_about_the_tasks_entities():
    doc = "Mara Vell founded the guild. " + "The weather was mild that year. " * 30 + "Orrin Hall was built in 1862."
    group = {"doc_id": "d", "title": "T", "text": doc}
    task = {"task_id": "t", "kind": "pair", "entities": ["Mara Vell", "Orrin Hall"], "seed": 1}
    sampling = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=8, repetition_penalty=1.0)
    full = relation_request(load_prompt_set("entigraph-v1"), group, task, sampling).messages[-1]["content"]
    focused = relation_request(load_prompt_set("entigraph-focused-v1"), group, task, sampling).messages[-1]["content"]
    assert doc in full and doc not in focused
    assert "Mara Vell founded the guild." in focused and "Orrin Hall was built in 1862." in focused
    assert len(focused) < len(full) / 2
