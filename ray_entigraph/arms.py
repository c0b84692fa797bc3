"""The arms of `ablate`, each declared once: what it changes, where it synthesizes, how it is drawn.

`ARMS` is the one registry. `config.py` validates `ablation.variants` against its names and builds that key's
description from it; `workflows.ablation` derives each arm's config from its overrides; `workflows.plots`
draws each arm's series in its colour and marker. A new arm is one entry here.

This module is imported by `config.py`, so it imports nothing from the package and no heavy library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The argument of an arm's callables is the config's `ablation` section (config.AblationConfig); it is typed
# Any here because config.py imports this module, and this module imports nothing of the package.
AblationSection = Any


@dataclass(frozen=True)
class Arm:
    """One arm of the ablation, trained beside the others at equal synthetic tokens and equal steps."""

    description: str  # what the arm is, as the configuration reference shows it
    overrides: Callable[[AblationSection], list[str]]  # dotted overrides on top of the user's config
    color: str  # matplotlib colour of its series in the plots
    marker: str  # matplotlib marker of its series
    # Its own folder under <output_dir>/ablation when its synthetic rows differ from the main run's (it
    # synthesizes there); None: it trains on the main synthetic rows (curated or not).
    own_dir: Callable[[AblationSection], str] | None = None
    # False for an arm that trains on the documents alone: it has no synthetic blocks, so it neither sets the
    # common budget nor takes a synthetic token budget.
    synthetic: bool = True


_CURATE_OFF = ["curate.enabled=false"]
_CURATE_ON = ["curate.enabled=true"]

# In the order the configuration reference lists them.
ARMS: dict[str, Arm] = {
    "entigraph": Arm("no filter", lambda a: [*_CURATE_OFF], "#4C72B0", "o"),
    "grounded": Arm("rows below min_grounding dropped",
                    lambda a: [*_CURATE_ON, f"curate.min_grounding={a.min_grounding}"], "#8172B2", "v"),
    "repaired": Arm("sentences below min_sentence_grounding dropped",
                    lambda a: [*_CURATE_ON, f"curate.min_sentence_grounding={a.min_sentence_grounding}"],
                    "#937860", "<"),
    "dedup": Arm("near-duplicates dropped", lambda a: [*_CURATE_ON, "curate.dedup=true"], "#DA8BC3", ">"),
    "judged": Arm("rows the judge model rates below min_judge_score dropped",
                  lambda a: [*_CURATE_ON, "curate.judge=true", f"curate.min_judge_score={a.min_judge_score}"],
                  "#2CA02C", "d"),
    "freeform": Arm("free-form relation prompts, prompt set entigraph-freeform-v1",
                    lambda a: [*_CURATE_OFF, f"synthesis.prompts={a.freeform_prompts}"], "#CCB974", "P",
                    own_dir=lambda a: "freeform"),
    "temperature": Arm("synthesis at `temperature`",
                       lambda a: [*_CURATE_OFF, f"synthesis.sampling.temperature={a.temperature}"], "#64B5CD", "X",
                       own_dir=lambda a: f"temperature-{a.temperature:g}"),
    "focused": Arm("relation prompts that show only the passages mentioning their entities (focused_prompts)",
                   lambda a: [*_CURATE_OFF, f"synthesis.prompts={a.focused_prompts}"], "#17BECF", "s",
                   own_dir=lambda a: "focused"),
    "qa-mix": Arm("every second relation text written as questions and answers (qa_prompts)",
                  lambda a: [*_CURATE_OFF, f"synthesis.prompts={a.qa_prompts}"], "#BCBD22", "h",
                  own_dir=lambda a: "qa-mix"),
    "megadoc": Arm("the synthetic texts of each document packed together, one megadoc per document",
                   lambda a: [*_CURATE_OFF, "train.packing=megadocs"], "#7F7F7F", "D"),
    "entigraph+raw": Arm("the synthetic corpus plus the documents",
                         lambda a: [*_CURATE_OFF, "train.corpus=synthetic+raw"], "#8C8C8C", "*"),
    "raw-cpt": Arm("the documents alone", lambda a: [*_CURATE_OFF, "train.corpus=raw"], "#C44E52", "^",
                   synthetic=False),
}

# Every other arm is compared with the unfiltered EntiGraph arm of its budget.
REFERENCE_ARM = "entigraph"


def arms_reference() -> str:
    """`name` (description), ... for every arm: the body of `ablation.variants`' description."""
    return ", ".join(f"`{name}` ({arm.description})" for name, arm in ARMS.items())
