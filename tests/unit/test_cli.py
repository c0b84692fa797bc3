"""The command line's error contract: a user error is one line naming the fix (its traceback only with
--traceback); a bug keeps its traceback, and a bug inside a stage on the driver is not disguised as a
failed stage. No Ray starts here: the stage fails while planning, before any worker would."""

from __future__ import annotations

import json

import pytest

from ray_entigraph import pipeline
from ray_entigraph.cli import main
from ray_entigraph.config import load_config
from ray_entigraph.context import RunContext
from ray_entigraph.errors import StageFailed
from ray_entigraph.stages.base import Stage


class BrokenPlan(Stage):
    name = "entities"

    def plan(self, ctx):
        return {}["a driver-side bug"]


class RayTaskError(Exception):
    """Named like Ray's wrapper of a worker's exception."""


class WorkerFailure(Stage):
    name = "synthetic"

    def plan(self, ctx):
        raise RayTaskError("ray::MapBatches(f)() (pid=1)\nValueError: the worker's own error")


def test_a_user_error_is_one_line_with_its_fix(capsys, tmp_path):
    assert main(["validate", f"input.path={tmp_path}/missing.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and "Fix:" in err and "Traceback" not in err


def test_traceback_flag_shows_a_user_errors_traceback(capsys, tmp_path):
    assert main(["--traceback", "validate", f"input.path={tmp_path}/missing.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().endswith(
        "Fix: set input.path to a file, folder or glob that exists.")


def test_a_bug_inside_a_stage_on_the_driver_keeps_its_traceback(monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline, "STAGES", (BrokenPlan,))
    monkeypatch.setattr(pipeline, "init_ray", lambda config: None)
    with pytest.raises(KeyError, match="a driver-side bug"):
        main(["synthesize", f"output_dir={tmp_path}"])
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["state"] == "failed" and run["error"].startswith("KeyError")


def test_a_worker_failure_becomes_stage_failed_with_its_root_cause(tmp_path):
    ctx = RunContext.resolve(load_config(None, [f"output_dir={tmp_path}"]))
    with pytest.raises(StageFailed, match=r"Stage 'synthetic' failed: ValueError: the worker's own error"):
        pipeline.run_stages(ctx, [WorkerFailure()], pipeline.RunState(ctx, "synthesize"))
