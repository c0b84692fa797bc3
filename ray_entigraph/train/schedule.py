"""Learning-rate schedule, weight-decay groups and batch arithmetic (pure functions)."""

from __future__ import annotations

import math

from ray_entigraph.errors import ConfigError


def total_steps(config, epoch_length: int) -> int:
    """The optimizer steps a training takes: its epochs over an epoch of `epoch_length` blocks, capped by
    train.max_steps (`config` is an EntiGraphConfig)."""
    steps = config.train.epochs * epoch_length // config.train.global_batch_size
    return min(steps, config.train.max_steps) if config.train.max_steps else steps


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


def decay_groups(model, weight_decay: float) -> list[dict]:
    """AdamW parameter groups by parameter name: weight decay on weight matrices and embeddings, none on
    biases and normalisation weights. Decided by name and owning module, not by `ndim`, so it holds when
    FSDP has flattened or sharded the parameters (FSDP1's flat 1-D parameter silently lost all decay)."""
    norms = {name for name, module in model.named_modules() if "norm" in type(module).__name__.lower()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        owner, _, leaf = name.rpartition(".")
        (no_decay if leaf == "bias" or owner in norms else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
