"""`workflows.steps`: a step runs once per relevant config, leaves its marker, and runs again when a setting
it depends on changes."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from ray_entigraph import storage
from ray_entigraph.config import derive, load_config
from ray_entigraph.workflows.steps import STEPS, marker_url, run, run_step, stamp


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


@dataclass
class _Produced:
    rows: int
    num_failed: int = 0

    def lines(self) -> list[str]:
        return [f"{self.rows} rows, {self.num_failed} failed"]


def test_a_step_reruns_when_its_data_changes_and_until_nothing_failed(tmp_path, capsys):
    config = load_config(None, [f"output_dir={tmp_path}"])
    outcomes = [_Produced(rows=10, num_failed=2), _Produced(rows=12), _Produced(rows=12)]
    calls = []

    def fn():
        calls.append(1)
        return outcomes[len(calls) - 1]

    first = run_step(config, "synthesize", "synthesize", fn, data={"inputs": "a"})
    assert first["num_failed"] == 2 and "with 2 failed" in capsys.readouterr().out
    # failures are retried by the next run; then the step is done and stays done
    second = run_step(config, "synthesize", "synthesize", fn, data={"inputs": "a"})
    assert len(calls) == 2 and "running it again to retry them" in capsys.readouterr().out
    assert run_step(config, "synthesize", "synthesize", fn, data={"inputs": "a"}) == second and len(calls) == 2
    assert second["stamp"] != first["stamp"]  # it produced more rows: the steps after it are stale
    # an edited input file is another identity; producing the same again keeps the same stamp
    third = run_step(config, "synthesize", "synthesize", fn, data={"inputs": "b"})
    assert len(calls) == 3 and third["identity"] != second["identity"] and third["stamp"] != second["stamp"]
    assert stamp({**third, "wall_s": 99.0, "lines": []}) == third["stamp"]  # timing is not data


def test_resources_and_prices_do_not_invalidate_a_step(tmp_path):
    config = load_config(None, [f"output_dir={tmp_path}"])
    calls = []
    run_step(config, "train", "train", lambda: calls.append(1) or _Summary())
    run_step(derive(config, ["resources.max_actors=4", "cost.usd_per_million_prompt_tokens=1.0"]), "train", "train",
             lambda: calls.append(1) or _Summary())
    assert len(calls) == 1


def test_the_input_identity_changes_when_a_file_is_edited_or_added(tmp_path):
    from ray_entigraph.context import RunContext

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("The Harbour Guild of Kestavel was founded in 1742 by Mara Odell.")
    config = load_config(None, [f"input.path={folder}", f"output_dir={tmp_path}/run"])
    before = RunContext.resolve(config).input_identity()
    assert RunContext.resolve(config).input_identity() == before
    (folder / "a.txt").write_text("The Harbour Guild of Kestavel was founded in 1743 by Mara Odell.")
    edited = RunContext.resolve(config).input_identity()
    (folder / "b.txt").write_text("Another document about the guild's net-makers and their ledger.")
    assert len({before, edited, RunContext.resolve(config).input_identity()}) == 3


def test_the_positive_control_of_run_is_raw_cpt_at_its_own_steps_in_its_own_folder():
    from ray_entigraph.config import load_config
    from ray_entigraph.workflows.steps import control_config

    assert control_config(load_config("configs/demo.yaml", ["run.raw_cpt_control_steps=null"])) is None  # off
    config = load_config("configs/demo.yaml", [])  # the demo asks for a 40-step control
    control = control_config(config)
    assert control.train.corpus == "raw" and control.train.max_steps == 40 and control.train.epochs >= 40
    assert control.train.name == "control/raw-cpt-40steps" and control.train.lr == config.train.lr
    assert control_config(load_config("configs/demo.yaml", ["run.raw_cpt_control_steps=40", "train.corpus=raw"])) \
        is None  # a Raw CPT run is its own control


def test_an_arm_in_its_run_folder_leaves_the_run_config_alone(tmp_path):
    """run's positive control (and every sweep or ablation arm) writes into the run's output_dir: the run's
    config.yaml, which status, view, export and load_corpus read, stays the run's own."""
    from ray_entigraph.config import derive, load_config
    from ray_entigraph.runtime import save_resolved_config
    from ray_entigraph.workflows.steps import control_config

    config = load_config("configs/demo.yaml", [f"output_dir={tmp_path}/run"])
    save_resolved_config(config)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    control = control_config(config)
    save_resolved_config(control)
    save_resolved_config(derive(control, ["train.lr=1e-5"]))  # an arm of an arm is still the run's arm
    assert (tmp_path / "run" / "config.yaml").read_text() == saved
    elsewhere = derive(config, [f"output_dir={tmp_path}/rephrase"])  # an arm in a folder of its own saves there
    save_resolved_config(elsewhere)
    assert (tmp_path / "rephrase" / "config.yaml").exists()
