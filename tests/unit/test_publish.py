"""The model card: the evaluation table of the run and what the model was trained from."""

from __future__ import annotations

import yaml

from ray_entigraph.publish import dataset_card, model_card

STATS = {"ray_entigraph_version": "0.1.0", "generator_model": "bundled:smollm2-135m-instruct", "engine": "vllm",
         "augmenter": "entigraph", "prompt_version": "entigraph-v1@abc", "seed": 0, "curate": False,
         "sampling": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 160, "repetition_penalty": 1.15},
         "input": "builtin:demo", "num_rows": 1234, "num_documents": 6, "rows_by_kind": {"pair": 1000, "triplet": 234},
         "generated_tokens": 98765, "mean_grounding": 0.4321, "fingerprint": "0123abcd4567"}


def test_model_card_holds_the_evaluation_table_with_intervals():
    report = {"summary": [
        {"label": "base", "accuracy": 0.2, "accuracy_ci95": [0.15, 0.25], "n": 240, "perplexity_knowledge": 51.9,
         "perplexity_forgetting": 17.2},
        {"label": "trained", "accuracy": 0.267, "accuracy_ci95": [0.2125, 0.325], "n": 240,
         "perplexity_knowledge": 1.43, "perplexity_forgetting": 15.67}]}
    card = model_card(report, STATS, "HuggingFaceTB/SmolLM2-135M", "org/model", "org/data")
    header = yaml.safe_load(card.split("---")[1])
    assert header["base_model"] == "HuggingFaceTB/SmolLM2-135M" and header["datasets"] == ["org/data"]
    assert "| base | 20.0% | [15.0, 25.0] | 240 | 51.90 | 17.20 |" in card
    assert "| trained | 26.7% | [21.2, 32.5] | 240 | 1.43 | 15.67 |" in card
    assert "1,234 texts" in card and "98,765 generated tokens" in card
    assert "No evaluation report" in model_card(None, STATS, "m")


def test_dataset_card_names_how_the_corpus_was_made():
    card = dataset_card(STATS, "org/data")
    header = yaml.safe_load(card.split("---")[1])
    assert header["size_categories"] == ["1K<n<10K"] and "synthetic" in header["tags"]
    for text in ("# org/data", "`bundled:smollm2-135m-instruct` (engine: vllm)", "`entigraph-v1@abc`",
                 "temperature 0.7, top_p 0.9, max_new_tokens 160, repetition_penalty 1.15",
                 "1,234 (pair: 1,000, triplet: 234)", "98,765", "0.432"):
        assert text in card
