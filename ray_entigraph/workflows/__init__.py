"""The whole mission as resumable steps, and the experiments built on it. Composition only.

`run` (steps.py) chains synthesize -> train -> eval on one output_dir; every step is a resumable command of its
own and writes a marker when it finishes, so a re-run skips what is done. `sweep` (sweep.py, the paper's
scaling experiment at the user's scale) and `ablate` (ablation.py, synthesis variants and filters at equal
tokens and steps) train and evaluate several arms through the same steps. The experiments never change the
synthesis path: an arm is a derived config (dotted overrides) run through the same pipeline. plots.py draws
their figures.

Importing this package is cheap: Ray, torch and matplotlib are imported inside the functions that need them.
"""

from __future__ import annotations

from ray_entigraph.workflows.ablation import ablate
from ray_entigraph.workflows.steps import run
from ray_entigraph.workflows.sweep import sweep

__all__ = ["ablate", "run", "sweep"]
