"""Replay mixing at the block level (pure functions, no Ray): the training stream is a pure function of
(the mixture's spec, seed, epoch), computed on each rank with numpy, never stored block by block.

`replace` (the paper): each epoch has as many blocks as the synthetic corpus, and a share of them are replay
blocks that take synthetic blocks' places; which synthetic blocks give way is drawn afresh every epoch (the
paper flips a coin per access; here the share is exact to one block per epoch, and the positions change
between epochs). `add`: replay blocks are added on top, so that they are the configured share of the larger
epoch. Several replay sources share the replay part by weight; every block holds block_len tokens, so block
counts are token counts. A replay source with fewer blocks than it must supply is cycled through, each pass
in a fresh order. The order within an epoch is a seeded shuffle.

Streams (`train.streams`): instead of one synthetic corpus, the non-replay part is several named streams
(the human-written documents, each synthetic format, megadocs) by token share. An epoch is then the largest
mix in which no stream repeats a block (min over streams of blocks / share); each stream's count is its
share of it, exact to one block, and which of its blocks are drawn changes between epochs. Replay keeps its
share of the whole, as above.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ray_entigraph.errors import InputError

SYNTHETIC = "synthetic"
REPLAY = "replay:"  # schema.REPLAY_PREFIX


def _split(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `total` across sources in proportion to weights (largest remainder, ties by name)."""
    norm = sum(weights.values())
    raw = {k: total * w / norm for k, w in weights.items()}
    counts = {k: int(v) for k, v in raw.items()}
    rest = total - sum(counts.values())
    for k in sorted(raw, key=lambda k: (-(raw[k] - counts[k]), k))[:rest]:
        counts[k] += 1
    return counts


@dataclass(frozen=True)
class MixSpec:
    """What decides the stream: the number of synthetic blocks trained on, the replay sources' block counts
    and weights, the share, the mode and the seed. Stored in mixture.json; every rank derives the stream."""

    num_synthetic: int
    replay_available: dict[str, int] = field(default_factory=dict)
    replay_weights: dict[str, float] = field(default_factory=dict)
    share: float = 0.0
    mode: str = "replace"
    seed: int = 0
    streams: dict[str, int] = field(default_factory=dict)  # stream -> blocks available (empty: one synthetic)
    stream_shares: dict[str, float] = field(default_factory=dict)  # stream -> token share of the non-replay part

    def __post_init__(self) -> None:
        if set(self.streams) != set(self.stream_shares) or any(w <= 0 for w in self.stream_shares.values()):
            raise ValueError("every stream needs a share > 0, and every share a stream")
        for name, count in self.streams.items():
            if count == 0:
                raise InputError(f"training stream {name!r} has no blocks. Fix: synthesize what it names, or remove "
                                 f"it from train.streams.")
        if not 0.0 <= self.share < 1.0:
            raise ValueError(f"replay share must be in [0, 1), got {self.share}")
        if self.mode not in ("replace", "add"):
            raise ValueError(f"replay mode must be 'replace' or 'add', got {self.mode!r}")
        if self.num_replay and not self.weights:
            raise ValueError("a replay share > 0 needs at least one replay source with weight > 0")
        for name, count in self.replay_counts.items():
            if count and self.replay_available.get(name, 0) == 0:
                raise InputError(f"replay source {name!r} has no blocks: its files hold no text. Fix: check "
                                 f"train.replay's path for {name!r}, or remove the source.")

    @property
    def weights(self) -> dict[str, float]:
        return {k: w for k, w in sorted(self.replay_weights.items()) if w > 0}

    @property
    def base_length(self) -> int:
        """The non-replay blocks of an epoch before replay: the synthetic corpus, or with streams the largest
        mix in which no stream repeats a block."""
        if not self.streams:
            return self.num_synthetic
        return min(self.streams[k] * _DENOM // round(w / sum(self.stream_shares.values()) * _DENOM)
                   for k, w in self.stream_shares.items())

    @property
    def num_replay(self) -> int:
        n = self.base_length
        return round(self.share * n) if self.mode == "replace" else round(self.share / (1.0 - self.share) * n)

    @property
    def main_counts(self) -> dict[str, int]:
        """Blocks of each non-replay stream per epoch."""
        kept = self.base_length - self.num_replay if self.mode == "replace" else self.base_length
        if not self.streams:
            return {SYNTHETIC: kept}
        return _split(kept, dict(sorted(self.stream_shares.items())))

    @property
    def main_available(self) -> dict[str, int]:
        return self.streams or {SYNTHETIC: self.num_synthetic}

    @property
    def replay_counts(self) -> dict[str, int]:
        return _split(self.num_replay, self.weights) if self.num_replay else {}

    @property
    def sources(self) -> list[str]:
        """Source names by code: the synthetic corpus (or the streams in name order), then "replay:<name>" in
        name order."""
        return [*sorted(self.main_available), *(REPLAY + name for name in self.weights)]

    @property
    def epoch_length(self) -> int:
        return sum(self.main_counts.values()) + self.num_replay

    def to_json(self) -> dict:
        out = {"num_synthetic": self.num_synthetic, "replay_available": self.replay_available,
               "replay_weights": self.replay_weights, "share": self.share, "mode": self.mode, "seed": self.seed}
        if self.streams:  # absent otherwise: mixtures written before streams existed compare equal
            out.update(streams=self.streams, stream_shares=self.stream_shares)
        return out

    @classmethod
    def from_json(cls, data: dict) -> "MixSpec":
        return cls(**data)


_DENOM = 10**9  # shares as integer parts per billion: the epoch length is exact integer arithmetic


def _key(spec: MixSpec) -> tuple:
    return (spec.num_synthetic, tuple(sorted(spec.replay_available.items())),
            tuple(sorted(spec.replay_weights.items())), spec.share, spec.mode, spec.seed,
            tuple(sorted(spec.streams.items())), tuple(sorted(spec.stream_shares.items())))


def epoch_stream(spec: MixSpec, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Epoch `epoch` of the stream as (source code, block index) arrays of `spec.epoch_length`: synthetic
    indices count within the synthetic blocks trained on, replay indices within that source's blocks."""
    key = (_key(spec), epoch)
    if key not in _CACHE:
        if len(_CACHE) >= 2:  # the current epoch and the next (a step may straddle them)
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _epoch_stream(spec, epoch)
    return _CACHE[key]


_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _epoch_stream(spec: MixSpec, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([spec.seed, epoch, 0x5EED])
    sources, indices = [], []
    counts, available = spec.main_counts, spec.main_available
    for code, name in enumerate(sorted(available)):
        n, count = available[name], counts.get(name, 0)
        if count == n:
            kept = np.arange(n)
        elif count < n:  # which blocks give way is drawn afresh every epoch
            kept = np.sort(rng.choice(n, count, replace=False))
        else:
            kept = np.concatenate([rng.permutation(n) for _ in range(-(-count // n))])[:count]
        sources.append(np.full(len(kept), code, dtype=np.int16))
        indices.append(kept.astype(np.int64))
    for code, name in enumerate(spec.weights, start=len(available)):
        count = spec.replay_counts.get(name, 0)
        if not count:
            continue
        available_r = spec.replay_available[name]
        passes = [rng.permutation(available_r) for _ in range(-(-count // available_r))]
        indices.append(np.concatenate(passes)[:count].astype(np.int64))
        sources.append(np.full(count, code, dtype=np.int16))
    src, idx = np.concatenate(sources), np.concatenate(indices)
    order = rng.permutation(len(src))
    return src[order], idx[order]


def stream_item(spec: MixSpec, position: int) -> tuple[str, int]:
    """(source, block index) at a global position of the epoch-concatenated stream."""
    epoch, offset = divmod(position, spec.epoch_length)
    src, idx = epoch_stream(spec, epoch)
    return spec.sources[int(src[offset])], int(idx[offset])


def plan_mixture(num_synthetic: int, replay_available: dict[str, int], replay_weights: dict[str, float], *,
                 share: float, mode: str, seed: int, epoch: int = 0) -> list[tuple[str, int]]:
    """One epoch of the stream as a list of (source, block index): for tests and inspection."""
    spec = MixSpec(num_synthetic, dict(replay_available), dict(replay_weights), share, mode, seed)
    src, idx = epoch_stream(spec, epoch)
    return [(spec.sources[int(s)], int(i)) for s, i in zip(src, idx)]


def is_replay(source: str) -> bool:
    return source.startswith(REPLAY)


def realised_share(stream: list[tuple[str, int]]) -> float:
    """The replay share of a stream."""
    return sum(is_replay(src) for src, _ in stream) / max(len(stream), 1)


def realised_shares(spec: MixSpec, epoch: int = 0) -> dict[str, float]:
    """Each source's share of an epoch's blocks (= of its tokens: every block holds block_len tokens)."""
    src, _ = epoch_stream(spec, epoch)
    counts = np.bincount(src, minlength=len(spec.sources))
    return {name: float(counts[i]) / max(len(src), 1) for i, name in enumerate(spec.sources)}


def synthetic_subset(available: int, max_tokens: int | None, block_len: int, seed: int) -> list[int] | None:
    """Indices of the synthetic blocks to train on: None for all of them, or a seeded random subset of
    ceil(max_tokens / block_len) blocks (at least one), in ascending order."""
    if max_tokens is None or max_tokens >= available * block_len:
        return None
    import random

    want = max(1, -(-max_tokens // block_len))
    return sorted(random.Random(f"{seed}:synthetic-subset").sample(range(available), want))
