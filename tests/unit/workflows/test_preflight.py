"""The preflight of `validate` (and of `run`, `sweep`, `ablate`): every input a configured step will read is
checked on the driver before anything starts, and a mistake is one line naming the key and the fix."""

from __future__ import annotations

import json

import pytest

from ray_entigraph.cli import main
from ray_entigraph.config import load_config
from ray_entigraph.errors import ConfigError, EntiGraphError, PromptError
from ray_entigraph.prompts import load_prompt_set
from ray_entigraph.workflows.preflight import preflight

pytestmark = pytest.mark.timeout(120)


def _validate(capsys, *overrides) -> str:
    assert main(["validate", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "Fix" in err
    return err


def test_the_demo_config_passes(tmp_path):
    ctx, warnings = preflight(load_config("configs/demo.yaml", [f"output_dir={tmp_path}/run"]), "ablate")
    assert ctx.input_files and warnings == []


def test_a_missing_replay_source_names_its_key(capsys, tmp_path):
    err = _validate(capsys, f"output_dir={tmp_path}/run", f"train.replay=[{{name: web, path: {tmp_path}/none}}]")
    assert "train.replay[0].path" in err and "does not exist" in err


def test_missing_questions_forgetting_text_and_model(capsys, tmp_path):
    assert "eval.questions" in _validate(capsys, f"output_dir={tmp_path}/run", f"eval.questions={tmp_path}/q.jsonl")
    assert "eval.forgetting_text" in _validate(capsys, f"output_dir={tmp_path}/run",
                                               f"eval.forgetting_text={tmp_path}/held-out")
    assert "eval.models" in _validate(capsys, f"output_dir={tmp_path}/run", f"eval.models=[{tmp_path}/model]")


def test_a_misspelt_placeholder_fails_before_any_actor(capsys, tmp_path):
    prompts = json.loads(load_prompt_set("entigraph-v1").model_dump_json())
    prompts["pair"]["user"] = prompts["pair"]["user"] + " Also mention {{entity_l}}."
    path = tmp_path / "mine.yaml"
    path.write_text(json.dumps(prompts))
    err = _validate(capsys, f"output_dir={tmp_path}/run", f"synthesis.prompts={path}")
    assert "template `pair`" in err and "{{entity_l}}" in err and "{{entity_2}}" in err
    with pytest.raises(PromptError):
        preflight(load_config(None, [f"output_dir={tmp_path}/run", f"synthesis.prompts={path}"]))


def test_output_dir_inside_the_input_folder_is_refused(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("The Harbour Guild of Kestavel was founded in 1742 by Mara Odell. " * 3)
    with pytest.raises(ConfigError, match="inside input.path"):
        preflight(load_config(None, [f"input.path={folder}", f"output_dir={folder}/run"]))
    preflight(load_config(None, [f"input.path={folder}", f"output_dir={tmp_path}/run"]))  # beside it: fine


def test_a_training_name_cannot_leave_output_dir(tmp_path):
    with pytest.raises(EntiGraphError, match="would leave output_dir"):
        load_config(None, [f"output_dir={tmp_path}", "train.name=../../x"])


@pytest.mark.parametrize("command", ["run", "sweep", "ablate"])
def test_run_sweep_and_ablate_check_before_they_start(command, capsys, tmp_path):
    """A typo in an input of a late step (evaluation) fails in the first second, before synthesis."""
    assert main([command, f"output_dir={tmp_path}/run", f"eval.questions={tmp_path}/q.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "eval.questions" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "documents").exists()
