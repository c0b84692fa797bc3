"""Pure parts of the faithfulness ablation outside the workflow: arm names in the config, and the curate stage
(identities, forced prefix, row filter). The workflow's arms, budgets, steps and report are tested in
tests/unit/workflows/test_ablation.py."""

from __future__ import annotations

import pytest

from ray_entigraph.config import load_config


def _cfg(*overrides):
    return load_config("configs/demo.yaml", list(overrides))


def test_unknown_variant_is_a_config_error_naming_the_choices():
    from ray_entigraph.config import ConfigError

    with pytest.raises(ConfigError, match="ablation.variants") as err:
        _cfg("ablation.variants=[entigraph,magic]")
    assert "'magic'" in str(err.value) and "entigraph+raw" in str(err.value) and "raw-cpt" in str(err.value)
    with pytest.raises(ConfigError, match="Did you mean 'dedup'"):
        _cfg("ablation.variants=[dedupe]")


def test_curation_id_changes_with_settings_and_inputs_but_not_with_enabled():
    from ray_entigraph.layout import curation_id

    base = _cfg("curate.min_grounding=0.5").curate
    assert curation_id(base, ["a", "b"]) == curation_id(base, ["b", "a"])
    assert curation_id(base, ["a", "b"]) != curation_id(base, ["a", "b", "c"])
    assert curation_id(base, ["a"]) != curation_id(_cfg("curate.min_grounding=0.6").curate, ["a"])
    assert curation_id(base, ["a"]) == curation_id(_cfg("curate.min_grounding=0.5", "curate.enabled=true").curate, ["a"])


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
