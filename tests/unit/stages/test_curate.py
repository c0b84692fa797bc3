"""The curate stage's pure parts (stages/curate.py): the forced prefix and the row filter (grounding and the
judge's score). The curated folder's identity is tested in tests/unit/test_layout.py."""

from __future__ import annotations

from ray_entigraph.config import CurateConfig
from ray_entigraph.prompts import load_prompt_set
from ray_entigraph.stages.curate import curate_row, forced_prefix
from ray_entigraph.text.grounding import DocumentIndex

DOCUMENT = "The Harbour Guild of Kestavel was founded in 1742 by Mara Odell, a salt trader."


def test_forced_prefix_is_what_the_prompt_wrote():
    prompts = load_prompt_set("entigraph-v1")
    row = {"kind": "pair", "title": "Salt Roads", "entities": ["Guild", "Port"],
           "text": '## Guild in "Salt Roads"\n\nIn "Salt Roads", Guild was founded.'}
    assert forced_prefix(prompts, row) == '## Guild in "Salt Roads"\n\nIn "Salt Roads", Guild'
    assert forced_prefix(prompts, {**row, "text": "something else"}) == ""  # e.g. a repaired row
    assert forced_prefix(prompts, {**row, "kind": "summary"}) == ""


def test_curate_row_drops_below_min_grounding_with_the_unsupported_units():
    index = DocumentIndex.from_text(DOCUMENT)
    cfg = CurateConfig(enabled=True, min_grounding=0.5, min_chars=10)
    good = {"task_id": "a", "text": "The Harbour Guild was founded in 1742 by Mara Odell."}
    bad = {"task_id": "b", "text": "Zorbanek Vellitrax founded the Quoridan Empire in 2317 near Plethmoor."}
    kept, category, reason = curate_row(good, index, cfg, "")
    assert category is None and kept["grounding"] > 0.9
    kept, category, reason = curate_row(bad, index, cfg, "")
    assert kept is None and category == "grounding" and "Zorbanek" in reason and "< min_grounding 0.5" in reason


def test_curate_row_drops_rows_the_judge_rated_low_or_not_at_all():
    index = DocumentIndex.from_text(DOCUMENT)
    cfg = CurateConfig(enabled=True, judge=True, min_judge_score=0.75, min_chars=10)
    row = {"task_id": "a", "text": "The Harbour Guild was founded in 1742 by Mara Odell."}
    kept, category, _ = curate_row(row, index, cfg, "", judge_score=1.0)
    assert category is None and kept["judge_score"] == 1.0
    kept, category, reason = curate_row(row, index, cfg, "", judge_score=0.5)
    assert kept is None and category == "judge" and "0.50 < min_judge_score 0.75" in reason
    kept, category, reason = curate_row(row, index, cfg, "", judge_score=None)
    assert kept is None and category == "judge" and "no rating" in reason
    # scores alone (no threshold) filter nothing
    unfiltered = CurateConfig(enabled=True, judge=True, min_chars=10)
    kept, category, _ = curate_row(row, index, unfiltered, "", judge_score=0.0)
    assert category is None and kept["judge_score"] == 0.0
