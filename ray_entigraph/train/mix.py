"""Replay mixing at the block level (pure functions, no Ray).

`replace` (the paper): the mixed stream has as many blocks as the synthetic corpus, and a share of them are
replay blocks that take synthetic blocks' places. `add`: replay blocks are added on top, so that they are
the configured share of the larger stream. Either way the share is realised exactly up to rounding (one
block), not by a per-block coin flip, and the order is a seeded shuffle.
"""

from __future__ import annotations

import random

from ray_entigraph.errors import InputError


def _split(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `total` across sources in proportion to weights (largest remainder, ties by name)."""
    norm = sum(weights.values())
    raw = {k: total * w / norm for k, w in weights.items()}
    counts = {k: int(v) for k, v in raw.items()}
    rest = total - sum(counts.values())
    for k in sorted(raw, key=lambda k: (-(raw[k] - counts[k]), k))[:rest]:
        counts[k] += 1
    return counts


def plan_mixture(
    num_synthetic: int,
    replay_available: dict[str, int],
    replay_weights: dict[str, float],
    *,
    share: float,
    mode: str,
    seed: int,
) -> list[tuple[str, int]]:
    """The training stream as (source, block index within that source), shuffled with `seed`.

    Source names are "synthetic" and "replay:<name>". A replay source with fewer blocks than it must supply
    is cycled through (its blocks repeat, each pass in a fresh seeded order).
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"replay share must be in [0, 1), got {share}")
    rng = random.Random(seed)
    if mode == "replace":
        num_replay = round(share * num_synthetic)
        kept = sorted(rng.sample(range(num_synthetic), num_synthetic - num_replay))
    elif mode == "add":
        num_replay = round(share / (1.0 - share) * num_synthetic)
        kept = list(range(num_synthetic))
    else:
        raise ValueError(f"replay mode must be 'replace' or 'add', got {mode!r}")
    stream = [("synthetic", i) for i in kept]
    weights = {k: w for k, w in replay_weights.items() if w > 0}
    if num_replay and not weights:
        raise ValueError("a replay share > 0 needs at least one replay source with weight > 0")
    for name, count in (_split(num_replay, weights) if num_replay else {}).items():
        available = replay_available.get(name, 0)
        if count and available == 0:
            raise InputError(f"replay source {name!r} has no blocks: its files hold no text. Fix: check "
                             f"train.replay's path for {name!r}, or remove the source.")
        picks: list[int] = []
        while len(picks) < count:
            cycle = list(range(available))
            rng.shuffle(cycle)
            picks.extend(cycle[: count - len(picks)])
        stream.extend((f"replay:{name}", i) for i in picks)
    rng.shuffle(stream)
    return stream


def realised_share(stream: list[tuple[str, int]]) -> float:
    return sum(src != "synthetic" for src, _ in stream) / max(len(stream), 1)
