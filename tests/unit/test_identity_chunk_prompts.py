import pytest

from ray_entigraph.prompts import builtin_prompt_sets, load_prompt_set, render, render_chat
from ray_entigraph.text.chunk import split_document
from ray_entigraph.text.identity import derive_seed, doc_id_for, request_key

KEY = dict(doc_id="d1", kind="pair", entities=("A", "B"), prompt_version="v1", model="m", sampling={"t": 1.0}, seed=0)


def test_doc_id_depends_on_normalised_text_only():
    assert doc_id_for("Hello world\r\n") == doc_id_for("Hello world   \n\n")
    assert doc_id_for("Hello world") != doc_id_for("Hello World")


@pytest.mark.parametrize("field,value", [("prompt_version", "v2"), ("model", "m2"), ("sampling", {"t": 0.5}),
                                         ("seed", 1), ("entities", ("B", "A")), ("kind", "triplet"), ("doc_id", "d2")])
def test_request_key_changes_with_every_input(field, value):
    assert request_key(**KEY) == request_key(**dict(KEY))
    assert request_key(**{**KEY, field: value}) != request_key(**KEY)


def test_derived_seed_stable():
    assert derive_seed(0, "d1", "pair") == derive_seed(0, "d1", "pair") != derive_seed(1, "d1", "pair")


def test_split_document_never_truncates():
    count = lambda s: len(s.split())  # noqa: E731
    paras = [" ".join(f"w{p}_{i}" for i in range(30)) + "." for p in range(10)]
    text = "\n\n".join(paras)
    chunks = split_document(text, 70, count)
    assert len(chunks) > 1 and all(count(c) <= 70 for c in chunks)
    assert " ".join(" ".join(chunks).split()) == " ".join(text.split())
    giant = " ".join(f"x{i}" for i in range(500))
    assert all(count(c) <= 70 for c in split_document(giant, 70, count))
    assert split_document("short", 70, count) == ["short"]


def test_builtin_prompt_sets_render():
    assert {"entigraph-v1", "rephrase-v1"} <= set(builtin_prompt_sets())
    ps = load_prompt_set("entigraph-v1")
    msgs = render_chat(ps.pair, {"title": "T", "document": "D", "entity_1": "A", "entity_2": "B"})
    assert msgs[-1]["role"] == "user" and '"A" and "B"' in msgs[-1]["content"] and "T" in msgs[-1]["content"]
    assert len(load_prompt_set("rephrase-v1").rephrase) == 3
    for name in builtin_prompt_sets():  # every shipped prompt file parses
        assert load_prompt_set(name).version == name
    qa = load_prompt_set("eval-cot-v1").qa
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
