import random
from collections import Counter

import pytest

from ray_entigraph.train.loop import stream_item
from ray_entigraph.train.mix import plan_mixture, realised_share
from ray_entigraph.train.pack import pack_token_lists
from ray_entigraph.train.schedule import accumulation_steps, warmup_cosine


def test_pack_puts_eos_between_texts_and_cuts_blocks():
    blocks, left = pack_token_lists([[1, 2, 3], [4, 5], [6]], block_len=4, eos_id=0)
    assert blocks == [[1, 2, 3, 0], [4, 5, 0, 6]] and left == 1
    assert pack_token_lists([], 4, 0) == ([], 0)


@pytest.mark.parametrize("mode", ["replace", "add"])
@pytest.mark.parametrize("share", [0.1, 0.05, 0.33])
def test_replay_share_is_realised_over_10k_blocks(mode, share):
    stream = plan_mixture(10_000, {"wiki": 500, "code": 20_000}, {"wiki": 1.0, "code": 3.0}, share=share, mode=mode, seed=7)
    assert abs(realised_share(stream) - share) < 0.005  # within 0.5 percentage points (in fact exact to a block)
    counts = Counter(src for src, _ in stream)
    assert len(stream) == (10_000 if mode == "replace" else 10_000 + counts["replay:wiki"] + counts["replay:code"])
    assert abs(counts["replay:code"] / (counts["replay:wiki"] + counts["replay:code"]) - 0.75) < 0.001  # weights
    assert plan_mixture(10_000, {"wiki": 500, "code": 20_000}, {"wiki": 1.0, "code": 3.0}, share=share, mode=mode, seed=7) == stream
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


def test_schedule_and_accumulation():
    lrs = [warmup_cosine(s, total_steps=100, warmup_steps=10, min_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[10] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] >= 0.1
    assert accumulation_steps(16, 1, 8) == 2 and accumulation_steps(16, 2, 2) == 4
    with pytest.raises(ValueError, match="multiple"):
        accumulation_steps(16, 3, 2)


def test_stream_positions_cover_each_epoch_once():
    stream = [("synthetic", i) for i in range(10)]
    epoch1 = [stream_item(stream, p, seed=3) for p in range(10, 20)]
    assert sorted(epoch1) == stream and epoch1 != stream
    assert [stream_item(stream, p, 3) for p in range(10)] == stream
    assert [stream_item(stream, p, 3) for p in range(10, 20)] == epoch1  # a pure function of position


def test_checkpoints_of_another_data_stream_are_not_resumed(tmp_path):
    import json

    from ray_entigraph.config import load_config
    from ray_entigraph.train.launch import _check_same_data

    from ray_entigraph.train.launch import trajectory_settings

    config = load_config(None, [f"output_dir={tmp_path}"])
    stream = {"stream": [("synthetic", 0), ("synthetic", 1)], "trajectory": trajectory_settings(config)}
    _check_same_data(config, stream)  # nothing trained yet
    (tmp_path / "train" / "ray").mkdir(parents=True)
    (tmp_path / "train" / "mixture.json").write_text(json.dumps(stream))
    _check_same_data(config, stream)  # the same stream and settings resume
    longer = load_config(None, [f"output_dir={tmp_path}", "train.max_steps=500", "train.checkpoint_every=7"])
    _check_same_data(longer, {**stream, "trajectory": trajectory_settings(longer)})  # may change between resumes
    with pytest.raises(ValueError, match="the data stream .* changed.*train.name"):
        _check_same_data(config, {**stream, "stream": [("synthetic", 1), ("synthetic", 0)]})
    other_lr = load_config(None, [f"output_dir={tmp_path}", "train.lr=1e-4"])
    with pytest.raises(ValueError, match="lr changed"):
        _check_same_data(other_lr, {**stream, "trajectory": trajectory_settings(other_lr)})
