"""Prompt sets (prompts/): the built-in sets load and render, user files are validated."""

import pytest

from ray_entigraph.prompts import builtin_prompt_sets, load_prompt_set, render, render_chat


def test_builtin_prompt_sets_render():
    assert {"entigraph-v1", "rephrase-v1"} <= set(builtin_prompt_sets())
    ps = load_prompt_set("entigraph-v1")
    msgs = render_chat(ps.pair, {"title": "T", "document": "D", "entity_1": "A", "entity_2": "B"})
    assert msgs[-1]["role"] == "user" and '"A" and "B"' in msgs[-1]["content"] and "T" in msgs[-1]["content"]
    assert len(load_prompt_set("rephrase-v1").rephrase) == 3
    for name in builtin_prompt_sets():  # every shipped prompt file parses
        assert load_prompt_set(name).version == name
    qa = load_prompt_set("eval-cot-v2").qa
    from ray_entigraph.config import EvalConfig
    from ray_entigraph.eval.generative import parse_answer

    # enough worked examples for the largest eval.few_shot, each closing with an answer the parser reads
    assert len(qa.examples) >= EvalConfig.model_fields["few_shot"].metadata[-1].le
    assert all(parse_answer(ex.assistant, 4) is not None for ex in qa.examples)


def test_unknown_placeholder_is_an_error():
    with pytest.raises(KeyError, match="entity_3"):
        render("{{entity_3}}", {"entity_1": "A"})


def test_user_prompt_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("version: mine-1\npair:\n  user: 'Relate {{entity_1}} and {{entity_2}} in {{document}}'\n")
    assert load_prompt_set(str(path)).version == "mine-1"
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: x\npair:\n  usr: hi\n")
    with pytest.raises(ValueError, match="invalid"):
        load_prompt_set(str(bad))
    with pytest.raises(ValueError, match="neither a built-in"):
        load_prompt_set("no-such-set")
