"""The command line (cli.py). Its error contract: a user error is one line naming the fix (its traceback only
with --traceback); a bug keeps its traceback, and a bug inside a stage on the driver is not disguised as a
failed stage. No Ray starts here: the stage fails while planning, before any worker would. And, as a user
runs it (`python -m ray_entigraph`): bad configs and missing inputs or keys are refused before Ray starts,
`--help` stays light, and `--dry-run` prices a run without running it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_entigraph import pipeline
from ray_entigraph.cli import main
from ray_entigraph.stages.base import Stage

REPO = Path(__file__).resolve().parents[2]


class BrokenPlan(Stage):
    name = "entities"

    def plan(self, ctx):
        return {}["a driver-side bug"]


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


def test_cli_rejects_bad_config_before_starting_ray():
    proc = subprocess.run(
        [sys.executable, "-m", "ray_entigraph", "synthesize", "plan.max_tripletz_per_doc=3"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown key" in proc.stderr and "max_triplets_per_doc" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout


def test_cli_missing_input_is_a_clear_error():
    proc = subprocess.run(
        [sys.executable, "-m", "ray_entigraph", "synthesize", "input.path=/no/such/corpus.jsonl"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "/no/such/corpus.jsonl" in proc.stderr and "does not exist" in proc.stderr


def test_import_and_help_stay_light():
    code = (
        "import sys, ray_entigraph, ray_entigraph.cli as c\n"
        "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'ray', 'transformers', 'vllm') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr
    assert "synthesize" in proc.stdout and "status" in proc.stdout


def test_cli_dry_run_starts_no_model_and_prices_the_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ray_entigraph", "synthesize", "--config", "configs/demo.yaml", "--dry-run", "--json",
         f"output_dir={tmp_path}", "cost.usd_per_million_prompt_tokens=1", "cost.usd_per_million_generated_tokens=2",
         "plan.max_tasks_total=10"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    est = json.loads(proc.stdout)
    assert est["num_documents"] == 6 and est["num_extract_requests"] == 6
    assert est["num_relation_requests"] == 10  # the global budget
    expected_cost = (est["num_prompt_tokens"] * 1 + est["max_generated_tokens"] * 2) / 1e6
    assert abs(est["estimated_cost_usd"] - expected_cost) < 1e-9
    assert not (tmp_path / "documents").exists()  # nothing ran


def test_cli_validate_names_the_missing_key():
    env = {k: v for k, v in os.environ.items() if k != "EG_TEST_KEY"}
    proc = subprocess.run([sys.executable, "-m", "ray_entigraph", "validate", "engine.kind=openai",
                           "engine.openai.base_url=https://api.example.com/v1",
                           "engine.openai.api_key_env=EG_TEST_KEY"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0 and "EG_TEST_KEY" in proc.stderr and "Fix:" in proc.stderr


def test_verbosity_flags_after_the_command_set_the_level_every_worker_gets(monkeypatch, tmp_path):
    from ray_entigraph.runtime import LOG_LEVEL_ENV, log_level

    for flags, level in (([], "WARNING"), (["-v"], "INFO"), (["-vv"], "DEBUG"), (["-q"], "ERROR")):
        monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
        assert main(["validate", *flags, "--config", "demo", f"output_dir={tmp_path}"]) == 0
        assert log_level() == level
