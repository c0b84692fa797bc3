"""Launching a training (train/launch.py) without Ray: the synthetic subset a token budget trains on, and
the refusal to resume checkpoints of another data stream or trajectory."""

from __future__ import annotations

import json

import pytest

from ray_entigraph.config import load_config
from ray_entigraph.train.launch import _check_same_data, trajectory_settings
from ray_entigraph.train.mix import synthetic_subset


def test_synthetic_subsets():  # the sweep's budgets are tested in tests/unit/workflows/test_sweep.py
    assert synthetic_subset(10, None, 64, 0) is None  # all of them
    assert synthetic_subset(10, 10 * 64, 64, 0) is None
    sub = synthetic_subset(100, 640, 64, 0)
    assert len(sub) == 10 and sub == sorted(set(sub)) and sub == synthetic_subset(100, 640, 64, 0)
    assert len(synthetic_subset(100, 650, 64, 0)) == 11 and len(synthetic_subset(100, 1, 64, 0)) == 1


def test_checkpoints_of_another_data_stream_are_not_resumed(tmp_path):
    # _check_same_data is private: its one caller, run_train, starts Ray Train first.
    config = load_config(None, [f"output_dir={tmp_path}"])
    stream = {"spec": {"num_synthetic": 2}, "counts": {"synthetic": 2}, "trajectory": trajectory_settings(config)}
    _check_same_data(config, stream)  # nothing trained yet
    (tmp_path / "train" / "ray").mkdir(parents=True)
    (tmp_path / "train" / "mixture.json").write_text(json.dumps(stream))
    _check_same_data(config, stream)  # the same stream and settings resume
    longer = load_config(None, [f"output_dir={tmp_path}", "train.max_steps=500", "train.checkpoint_every=7"])
    _check_same_data(longer, {**stream, "trajectory": trajectory_settings(longer)})  # may change between resumes
    with pytest.raises(ValueError, match="the data stream .* changed.*train.name"):
        _check_same_data(config, {**stream, "spec": {"num_synthetic": 2, "seed": 5}})
    other_lr = load_config(None, [f"output_dir={tmp_path}", "train.lr=1e-4"])
    with pytest.raises(ValueError, match="lr changed"):
        _check_same_data(other_lr, {**stream, "trajectory": trajectory_settings(other_lr)})
    other_model = load_config(None, [f"output_dir={tmp_path}", "model.name=another/model"])  # train.base_model unset
    with pytest.raises(ValueError, match="base_model changed"):
        _check_same_data(other_model, {**stream, "trajectory": trajectory_settings(other_model)})
