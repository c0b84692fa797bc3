"""The training mixture (train/mix.py): the replay share realised, source weights, and its errors."""

from collections import Counter

import pytest

from ray_entigraph.train.mix import MixSpec, epoch_stream, plan_mixture, realised_share, stream_item


@pytest.mark.parametrize("mode", ["replace", "add"])
@pytest.mark.parametrize("share", [0.1, 0.05, 0.33])
def test_replay_share_is_realised_over_10k_blocks(mode, share):
    sizes, weights = {"wiki": 500, "code": 20_000}, {"wiki": 1.0, "code": 3.0}
    stream = plan_mixture(10_000, sizes, weights, share=share, mode=mode, seed=7)
    assert abs(realised_share(stream) - share) < 0.005  # within 0.5 percentage points (in fact exact to a block)
    counts = Counter(src for src, _ in stream)
    assert len(stream) == (10_000 if mode == "replace" else 10_000 + counts["replay:wiki"] + counts["replay:code"])
    assert abs(counts["replay:code"] / (counts["replay:wiki"] + counts["replay:code"]) - 0.75) < 0.001  # weights
    assert plan_mixture(10_000, sizes, weights, share=share, mode=mode, seed=7) == stream
    synthetic = [i for src, i in stream if src == "synthetic"]
    assert len(synthetic) == len(set(synthetic))  # no synthetic block twice
    wiki = [i for src, i in stream if src == "replay:wiki"]
    assert max(Counter(wiki).values()) - min(Counter(wiki).values()) <= 1  # a small source cycles evenly


def test_mixture_errors():
    with pytest.raises(ValueError, match="at least one replay source"):
        plan_mixture(10, {}, {}, share=0.1, mode="replace", seed=0)
    with pytest.raises(ValueError, match="replace' or 'add"):
        plan_mixture(10, {"a": 1}, {"a": 1}, share=0.1, mode="swap", seed=0)
    assert plan_mixture(5, {}, {}, share=0.0, mode="replace", seed=0) != []


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_each_epoch_realises_the_share_with_fresh_positions(mode):
    """Replay exact to one block in every epoch, and which synthetic blocks give way (replace) and where replay
    sits changes between epochs (the paper's coin per access, without its variance)."""
    spec = MixSpec(1_000, {"wiki": 30}, {"wiki": 1.0}, 0.1, mode, seed=3)
    epochs = [plan_mixture(1_000, {"wiki": 30}, {"wiki": 1.0}, share=0.1, mode=mode, seed=3, epoch=e) for e in range(3)]
    for stream in epochs:
        assert len(stream) == spec.epoch_length
        assert sum(src != "synthetic" for src, _ in stream) == spec.num_replay  # exact, every epoch
    replay_positions = [{p for p, (src, _) in enumerate(s) if src != "synthetic"} for s in epochs]
    assert replay_positions[0] != replay_positions[1] != replay_positions[2]
    if mode == "replace":
        dropped = [set(range(1_000)) - {i for src, i in s if src == "synthetic"} for s in epochs]
        assert dropped[0] != dropped[1]  # not the same 10% left out every epoch
    # the stream is a pure function of (spec, position): no list is kept
    assert [stream_item(spec, spec.epoch_length + k) for k in range(5)] == epochs[1][:5]
    src, idx = epoch_stream(spec, 2)
    assert src.dtype.itemsize <= 2 and idx.dtype.itemsize == 8  # numpy arrays, not Python objects
