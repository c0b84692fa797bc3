"""The rewrite augmenter's pure parts: formats chosen per document by rules over its columns, token budgets
in proportion to the document (planning.py), and the output filters (text/output_filters.py)."""

from __future__ import annotations

import json

import pytest

from ray_entigraph import schema
from ray_entigraph.config import load_config
from ray_entigraph.errors import ConfigError
from ray_entigraph.planning import document_tasks
from ray_entigraph.prompts import load_prompt_set
from ray_entigraph.text.output_filters import dominant_script, loops, output_problem

RULES = ('rewrite.formats=[{name: faq, when: ["quality >= 0.5", "language == en"]}, '
         '{name: wikipedia, when: ["quality < 0.5"]}, {name: table, repeats: 2, when: ["num_tokens > 100"]}]')


def _doc(doc_id: str, num_tokens: int, **meta) -> dict:
    return {"doc_id": doc_id, "title": "T", "text": "x", "num_tokens": num_tokens, "source": "f.parquet",
            "chunk_index": 0, "num_chunks": 1, "metadata_json": json.dumps(meta)}


def test_formats_follow_the_rules_and_budgets_follow_the_document():
    config = load_config(None, ["synthesis.augmenter=rewrite", "synthesis.prompts=rewrite-v1", RULES,
                                "rewrite.output_ratio=0.5", "rewrite.min_new_tokens=64",
                                "synthesis.sampling.max_new_tokens=300"])
    prompts = load_prompt_set("rewrite-v1")

    def kinds(doc):
        tasks = document_tasks(config, prompts, doc, None)
        return sorted(t["kind"].removeprefix(schema.KIND_REWRITE_PREFIX) for t in tasks), tasks

    good, tasks = kinds(_doc("a", 400, quality=0.9, language="en"))
    assert good == ["faq", "table", "table"] and {t["max_new_tokens"] for t in tasks} == {200}
    assert len({t["task_id"] for t in tasks}) == 3 and len({t["seed"] for t in tasks}) == 3  # repeats differ
    assert kinds(_doc("b", 50, quality=0.2, language="en"))[0] == ["wikipedia"]
    assert kinds(_doc("c", 1000, quality=0.9, language="fr"))[0] == ["table", "table"]
    assert kinds(_doc("d", 50))[0] == []  # no quality column: neither rule on it holds
    assert {t["max_new_tokens"] for t in kinds(_doc("e", 1000, quality=0.9, language="fr"))[1]} == {300}  # capped
    assert {t["max_new_tokens"] for t in kinds(_doc("f", 101, quality=0.1))[1]} == {64}  # the floor
    plain = load_config(None, ["synthesis.augmenter=rewrite", "synthesis.prompts=rewrite-v1"])
    every = {t["kind"] for t in document_tasks(plain, prompts, _doc("g", 10), None)}
    assert every == {schema.KIND_REWRITE_PREFIX + n for n in prompts.rephrase} and len(every) >= 4


def test_rewrite_config_mistakes_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="rewrite.formats.*Fix"):
        load_config(None, ["synthesis.augmenter=rewrite", "synthesis.prompts=rewrite-v1",
                           "rewrite.formats=[{name: faq, when: ['quality >> 1']}]"])
    with pytest.raises(ConfigError, match="synthesis.prompts=rewrite-v1"):
        load_config(None, ["synthesis.augmenter=rewrite"])


TEXT = "The Harbour Guild of Kestavel was founded in 1742 by Mara Odell, a shipwright from the northern coast."


@pytest.mark.parametrize("text, finish, check, reason", [
    ("The guild was founded in 1742 by Mara Odell.", "length", "truncated", "truncated"),
    (" ".join(["the guild met at the hall"] * 12), "stop", "looping", "looping"),
    ("I'm sorry, but I cannot rewrite this document.", "stop", "refusal", "refusal"),
    ("Гильдия была основана в 1742 году Марой Оделл.", "stop", "language", "language: written in Cyrillic"),
    ("Gilda została założona przez Marę Odell, szkutnika z północnego wybrzeża.", "stop", "language",
     "language: the document is in English"),
])
def test_each_output_filter_drops_what_it_names_and_passes_a_good_text(text, finish, check, reason):
    assert output_problem(text, finish, TEXT, (check,)).startswith(reason)
    good = "Q: Who founded the guild? A: Mara Odell founded the Harbour Guild of Kestavel in 1742."
    assert output_problem(good, "stop", TEXT, ("looping", "truncated", "refusal", "language")) is None


def test_scripts_and_loops():
    assert dominant_script("東京は日本の首都です") == "CJK" and dominant_script("12 34") is None
    assert not loops("short text") and loops(" ".join(["a b c d"] * 10))
