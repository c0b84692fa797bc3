"""The stage order (pipeline.py) without Ray: a failure that came from Ray's workers becomes StageFailed
naming its root cause (a driver-side bug keeps its own type: tests/unit/test_cli.py)."""

from __future__ import annotations

import pytest

from ray_entigraph import pipeline
from ray_entigraph.config import load_config
from ray_entigraph.context import RunContext
from ray_entigraph.errors import StageFailed
from ray_entigraph.stages.base import Stage


class RayTaskError(Exception):
    """Named like Ray's wrapper of a worker's exception."""


class WorkerFailure(Stage):
    name = "synthetic"

    def plan(self, ctx):
        raise RayTaskError("ray::MapBatches(f)() (pid=1)\nValueError: the worker's own error")


def test_a_worker_failure_becomes_stage_failed_with_its_root_cause(tmp_path):
    ctx = RunContext.resolve(load_config(None, [f"output_dir={tmp_path}"]))
    with pytest.raises(StageFailed, match=r"Stage 'synthetic' failed: ValueError: the worker's own error"):
        pipeline.run_stages(ctx, [WorkerFailure()], pipeline.RunState(ctx, "synthesize"))
