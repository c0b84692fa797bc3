"""Which models `eval` evaluates: a training that started must have exported a whole model, never left out
silently."""

from __future__ import annotations

import json

import pytest

from ray_entigraph.config import load_config
from ray_entigraph.errors import InputError
from ray_entigraph.eval.launch import export_problem, models_to_evaluate


def test_export_problem_names_what_is_missing(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    assert "no config.json" in export_problem(str(model))
    (model / "config.json").write_text("{}")
    assert "no model.safetensors" in export_problem(str(model))
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (model / "model-00001-of-00002.safetensors").write_bytes(b"x")
    assert "['model-00002-of-00002.safetensors']" in export_problem(str(model))
    (model / "model-00002-of-00002.safetensors").write_bytes(b"x")
    assert export_problem(str(model)) is None


def test_a_started_training_without_its_export_is_an_error_not_a_missing_row(tmp_path):
    config = load_config(None, [f"output_dir={tmp_path}"])
    assert [label for label, _ in models_to_evaluate(config)] == ["base"]  # no training started: base only
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "mixture.json").write_text("{}")
    with pytest.raises(InputError, match="has no config.json"):
        models_to_evaluate(config)
    (tmp_path / "train" / "model").mkdir()
    (tmp_path / "train" / "model" / "config.json").write_text("{}")
    (tmp_path / "train" / "model" / "model.safetensors").write_bytes(b"x")
    assert [label for label, _ in models_to_evaluate(config)] == ["base", "trained"]
