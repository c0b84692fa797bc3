"""The learning-rate schedule and gradient accumulation (train/schedule.py)."""

import pytest

from ray_entigraph.train.schedule import accumulation_steps, warmup_cosine


def test_schedule_and_accumulation():
    lrs = [warmup_cosine(s, total_steps=100, warmup_steps=10, min_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[10] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] >= 0.1
    assert accumulation_steps(16, 1, 8) == 2 and accumulation_steps(16, 2, 2) == 4
    with pytest.raises(ValueError, match="multiple"):
        accumulation_steps(16, 3, 2)
