"""`workflows.steps`: a step runs once per relevant config, leaves its marker, and runs again when a setting
it depends on changes."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from ray_entigraph import storage
from ray_entigraph.config import derive, load_config
from ray_entigraph.workflows.steps import STEPS, marker_url, run, run_step


@dataclass
class _Summary:
    synthetic_tokens_used: int = 7

    def lines(self) -> list[str]:
        return ["did it"]


def test_a_finished_step_is_skipped_until_a_setting_it_depends_on_changes(tmp_path, capsys):
    config = load_config(None, [f"output_dir={tmp_path}"])
    calls = []

    def fn():
        calls.append(1)
        return _Summary()

    first = run_step(config, "train", "train", fn)
    assert first["lines"] == ["did it"] and first["synthetic_tokens_used"] == 7 and len(calls) == 1
    marker = json.loads(storage.read_text(marker_url(config, "train")))
    assert marker["step"] == "train" and marker["result"] == first
    assert run_step(config, "train", "train", fn) == first and len(calls) == 1
    assert "done earlier" in capsys.readouterr().out
    # eval settings are not a training's: still done; a training setting is
    assert run_step(derive(config, ["eval.max_questions=3"]), "train", "train", fn) == first and len(calls) == 1
    run_step(derive(config, ["train.lr=0.5"]), "train", "train", fn)
    assert len(calls) == 2
    # a step name with a slash keeps its marker in _steps/ all the same
    assert marker_url(config, "sweep/eval").endswith("_steps/sweep-eval.json")


def test_run_names_its_steps_and_refuses_an_unknown_until(tmp_path):
    assert STEPS == ("synthesize", "train", "eval")
    with pytest.raises(ValueError, match="not a step"):
        run(load_config(None, [f"output_dir={tmp_path}"]), until="deploy")
