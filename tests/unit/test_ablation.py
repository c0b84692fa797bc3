"""Pure parts of the faithfulness ablation and the curate stage: arms, budgets, steps, identities."""

from __future__ import annotations

import pytest

from ray_entigraph.config import derive, load_config
from ray_entigraph.workflow import ablation_budgets, ablation_overrides, equal_steps


def _cfg(*overrides):
    return load_config("configs/demo.yaml", list(overrides))


def test_every_ablation_arm_is_a_valid_config_that_differs_in_its_own_setting():
    config = _cfg()
    variants = ["entigraph", "grounded", "repaired", "dedup", "judged", "freeform", "temperature", "entigraph+raw",
                "raw-cpt"]
    arms = {}
    for v in variants:
        overrides, own_dir = ablation_overrides(config, v)
        arms[v] = derive(config, overrides)
        assert (own_dir is not None) == (v in ("freeform", "temperature"))  # new synthetic rows, own output_dir
    assert not arms["entigraph"].curate.enabled
    assert arms["grounded"].curate.enabled and arms["grounded"].curate.min_grounding == config.ablation.min_grounding
    assert arms["repaired"].curate.min_sentence_grounding == config.ablation.min_sentence_grounding
    assert arms["dedup"].curate.dedup and arms["dedup"].curate.min_grounding is None
    assert arms["judged"].curate.judge and arms["judged"].curate.min_judge_score == config.ablation.min_judge_score
    assert arms["freeform"].synthesis.prompts == "entigraph-freeform-v1"
    assert arms["temperature"].synthesis.sampling.temperature == config.ablation.temperature
    assert arms["entigraph+raw"].train.corpus == "synthetic+raw" and arms["raw-cpt"].train.corpus == "raw"


def test_budgets_are_whole_blocks_every_arm_can_fill():
    assert ablation_budgets(36, 256, 1) == [36 * 256]
    assert ablation_budgets(36, 256, 3) == [9 * 256, 18 * 256, 36 * 256]
    assert ablation_budgets(1, 64, 4) == [64]


def test_equal_steps_follow_epochs_over_the_budget():
    config = _cfg("ablation.epochs=null")  # block_len 256, global batch 4, train.epochs 2
    assert equal_steps(config, 36 * 256) == 2 * 36 // 4
    assert equal_steps(config, 10) == 1
    assert equal_steps(derive(config, ["ablation.epochs=4"]), 36 * 256) == 4 * 36 // 4


def test_unknown_variant_is_a_config_error_naming_the_choices():
    from ray_entigraph.config import ConfigError

    with pytest.raises(ConfigError, match="ablation.variants"):
        _cfg("ablation.variants=[entigraph,magic]")


def test_curation_id_changes_with_settings_and_inputs_but_not_with_enabled():
    from ray_entigraph.stages.curate import curation_id

    base = _cfg("curate.min_grounding=0.5")
    assert curation_id(base, ["a", "b"]) == curation_id(base, ["b", "a"])
    assert curation_id(base, ["a", "b"]) != curation_id(base, ["a", "b", "c"])
    assert curation_id(base, ["a"]) != curation_id(_cfg("curate.min_grounding=0.6"), ["a"])
    assert curation_id(base, ["a"]) == curation_id(_cfg("curate.min_grounding=0.5", "curate.enabled=true"), ["a"])


def test_forced_prefix_is_what_the_prompt_wrote():
    from ray_entigraph.prompts import load_prompt_set
    from ray_entigraph.stages.curate import forced_prefix

    prompts = load_prompt_set("entigraph-v1")
    row = {"kind": "pair", "title": "Salt Roads", "entities": ["Guild", "Port"],
           "text": '## Guild in "Salt Roads"\n\nIn "Salt Roads", Guild was founded.'}
    assert forced_prefix(prompts, row) == '## Guild in "Salt Roads"\n\nIn "Salt Roads", Guild'
    assert forced_prefix(prompts, {**row, "text": "something else"}) == ""  # e.g. a repaired row
    assert forced_prefix(prompts, {**row, "kind": "summary"}) == ""


def test_curate_row_drops_below_min_grounding_with_the_unsupported_units():
    from ray_entigraph.config import CurateConfig
    from ray_entigraph.stages.curate import curate_row
    from ray_entigraph.text.grounding import DocumentIndex

    index = DocumentIndex.from_text("The Harbour Guild of Kestavel was founded in 1742 by Mara Odell, a salt trader.")
    cfg = CurateConfig(enabled=True, min_grounding=0.5, min_chars=10)
    good = {"task_id": "a", "text": "The Harbour Guild was founded in 1742 by Mara Odell."}
    bad = {"task_id": "b", "text": "Zorbanek Vellitrax founded the Quoridan Empire in 2317 near Plethmoor."}
    kept, category, reason = curate_row(good, index, cfg, "")
    assert category is None and kept["grounding"] > 0.9
    kept, category, reason = curate_row(bad, index, cfg, "")
    assert kept is None and category == "grounding" and "Zorbanek" in reason and "< min_grounding 0.5" in reason
