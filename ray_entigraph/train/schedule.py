"""Learning-rate schedule and batch arithmetic (pure functions)."""

from __future__ import annotations

import math

from ray_entigraph.errors import ConfigError


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup reaching 1 at step `warmup_steps` (step 0 gets 1/(warmup_steps+1)),
    then cosine decay to `min_ratio` at the last step."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    progress = min(max(progress, 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def accumulation_steps(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Micro-batches per optimizer step on each worker, so that world x micro x accum == global batch."""
    per_step = micro_batch * world_size
    if global_batch % per_step:
        raise ConfigError(
            f"train.global_batch_size ({global_batch}) must be a multiple of train.micro_batch_size "
            f"({micro_batch}) x workers ({world_size}). Fix: change one of them."
        )
    return global_batch // per_step
