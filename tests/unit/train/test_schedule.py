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


def test_weight_decay_on_two_dimensional_weights_only(tiny_model_dir):
    """Decay groups go by parameter name and owning module: every 2-D weight (embeddings, projections) decays,
    every norm weight and bias does not, whatever shape FSDP later gives the parameters."""
    from transformers import AutoModelForCausalLM

    from ray_entigraph.train.schedule import decay_groups

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    decay, no_decay = decay_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(p) for p in model.parameters() if p.ndim == 2}
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in model.parameters() if p.ndim < 2}
    assert no_decay["params"]
