"""One preflight for `validate` and the start of `run`, `sweep` and `ablate`: everything the configured steps
will read is checked on the driver in seconds, before Ray, a model or a GPU is paid for.

It resolves the run (`context.RunContext`: input files, prompt sets that load and render), then checks what
later steps read: replay sources, the evaluation questions (parsed line by line, as evaluation will), held-out
text and extra models, the prompt sets of the generative protocol and of the `freeform` ablation arm, and
where outputs go (`output_dir` writable and not inside `input.path`). Each failure is a user error naming
the key and the fix.
"""

from __future__ import annotations

import os

from ray_entigraph import storage
from ray_entigraph.config import EntiGraphConfig, InputConfig, derive
from ray_entigraph.context import RunContext
from ray_entigraph.engines import preflight as engine_preflight
from ray_entigraph.errors import ConfigError, InputError, QuestionsError
from ray_entigraph.eval.launch import QA_PROMPTS
from ray_entigraph.eval.quality import load_questions, resolve_questions_url
from ray_entigraph.inputs import list_input_files, resolve_input_path
from ray_entigraph.prompts import QA_VALUES, check_renders, load_prompt_set
from ray_entigraph.train.trackers import check_available as check_trackers

# Which later steps each command runs, and so which of their inputs it checks.
TRAINS = {"run", "sweep", "ablate", "validate"}
EVALUATES = {"run", "sweep", "ablate", "validate"}


def preflight(config: EntiGraphConfig, command: str = "validate") -> tuple[RunContext, list[str]]:
    """(the resolved run, warnings) or a user error naming the key and the fix."""
    ctx = RunContext.resolve(config)
    warnings = engine_preflight(config)
    _output_dir_apart(config)
    storage.check_writable(config.output_dir)
    ctx.layout.check_version()
    if command in TRAINS:
        check_trackers(config)
        for i, source in enumerate(config.train.replay):
            _readable(InputConfig(path=source.path, text_field=source.text_field), f"train.replay[{i}].path")
    if command in EVALUATES:
        _eval_inputs(config)
    if command == "ablate" and "freeform" in config.ablation.variants:
        # the freeform arm synthesizes with its own prompt set: it loads and renders too
        RunContext.resolve(derive(config, [f"synthesis.prompts={config.ablation.freeform_prompts}"]),
                           list_inputs=False)
    return ctx, warnings


def _readable(cfg: InputConfig, key: str) -> None:
    try:
        list_input_files(cfg)
    except InputError as exc:
        raise InputError(f"{key}: {exc}") from None


def _eval_inputs(config: EntiGraphConfig) -> None:
    ec = config.eval
    if not ec.questions.strip():
        raise ConfigError("eval.questions is empty. Fix: point it at a QuALITY-layout JSON Lines file, or set "
                          "eval.questions=auto (the input, when it holds questions) or none.")
    questions = resolve_questions_url(ec.questions, config.input.path)
    if questions is not None and not storage.exists(resolve_input_path(questions)):
        raise InputError(f"eval.questions {ec.questions!r} does not exist. Fix: point it at a QuALITY-layout JSON "
                         "Lines file, or set eval.questions=auto (the input, when it holds questions) or none.")
    if questions is not None:  # parsed as evaluation will parse it: a bad line fails now, not after training
        try:
            load_questions(questions, ec.max_questions)
        except QuestionsError as exc:
            raise QuestionsError(f"eval.questions: {exc}") from None
    if ec.perplexity_texts:
        _readable(InputConfig(path=ec.forgetting_text), "eval.forgetting_text")
    for spec in ec.models:
        path = spec.rpartition("=")[2]
        if "://" in path and not storage.exists(storage.join(path, "config.json")):
            raise InputError(f"eval.models: {path!r} has no config.json. Fix: point it at an exported Hugging Face "
                             "model folder.")
        # a local path that is not there (a hub id such as org/name cannot be checked without the hub)
        if path.startswith((".", "/", "~")) and not os.path.exists(os.path.expanduser(path)):
            raise InputError(f"eval.models: {path!r} does not exist. Fix: point it at a model folder, or use a "
                             "Hugging Face model id.")
    if ec.protocol == "generative":
        prompts = load_prompt_set(QA_PROMPTS)
        if prompts.qa is None:
            raise ConfigError(f"Prompt set {QA_PROMPTS!r} has no `qa` template.")
        check_renders(QA_PROMPTS, "qa", prompts.qa, QA_VALUES)


def _output_dir_apart(config: EntiGraphConfig) -> None:
    """output_dir inside a local input folder would ingest the run's own outputs on the next run."""
    source = resolve_input_path(config.input.path)
    if not (storage.is_local(source) and storage.is_local(config.output_dir)):
        if source.rstrip("/") and config.output_dir.startswith(source.rstrip("/") + "/"):
            raise ConfigError(f"output_dir {config.output_dir!r} is inside input.path {config.input.path!r}: the next "
                              "run would ingest its own outputs. Fix: put output_dir outside the input folder.")
        return
    folder = os.path.abspath(source.removeprefix("file://"))
    out = os.path.abspath(config.output_dir.removeprefix("file://"))
    if os.path.isdir(folder) and os.path.commonpath([folder, out]) == folder:
        raise ConfigError(f"output_dir {config.output_dir!r} is inside input.path {config.input.path!r}: the next run "
                          "would ingest its own outputs. Fix: put output_dir outside the input folder.")
