"""Steps with markers, and `run`: synthesize -> train -> eval on one output_dir.

A step that finishes writes a marker, <output_dir>/_steps/<step>.json, holding its identity and its summary.
The identity hashes the config sections the step depends on and the data it read: for synthesize the input
files (name, size, modification) and whether it ingested only; for a later step the *stamp* of the step
before it, a hash of that step's identity and of what it produced (rows, failures, tokens, steps). A re-run
skips a step whose identity matches, so a run killed between steps (or during one) continues where it
stopped, and a step killed midway resumes from its own committed work (shards, checkpoints). Change a setting
or an input file a step depends on, and that step and those after it run again; a step that produced the
same data again leaves the later steps done. A step that finished with failed requests is "done with N
failed": the next `run` runs it again, which retries exactly those. `sweep` and `ablate` run their arms
through `run_step` too.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable

from ray_entigraph import storage
from ray_entigraph.config import EntiGraphConfig, derive, section_hash, without_streams
from ray_entigraph.context import RunContext
from ray_entigraph.errors import ConfigError
from ray_entigraph.eval.launch import models_to_evaluate, run_eval
from ray_entigraph.eval.report import RAW_CPT_LABEL
from ray_entigraph.layout import train_url
from ray_entigraph.lease import leased
from ray_entigraph.pipeline import synthesize
from ray_entigraph.train.launch import run_train
from ray_entigraph.workflows.preflight import preflight

# top-level config sections each kind of step does NOT depend on (resources, prices, storage timeouts and the
# lease change how and at what cost a step runs, never what it produces)
_IGNORED = {
    "synthesize": ("train", "eval", "run", "sweep", "ablation", "resources", "cost", "storage", "lease"),
    "train": ("eval", "run", "sweep", "ablation", "resources", "cost", "storage", "lease"),
    "eval": ("run", "sweep", "ablation", "resources", "cost", "storage", "lease"),  # the control: in its data
}
# What a step's summary says it produced: part of its stamp, which the steps after it depend on.
_PRODUCED = ("rows", "num_failed", "synthetic_tokens_used", "steps")

STEPS = ("synthesize", "train", "eval")

# A training with a step budget (an ablation arm, Raw CPT in sweep and run) has its train.epochs raised to at
# least this many passes over its own stream, so that train.max_steps, not the end of the stream, stops it: Raw
# CPT's stream (the documents alone) is far shorter than a synthetic budget. It suffices while a synthetic budget
# is at most MIN_STREAM_EPOCHS / ablation.epochs times the documents' blocks (32 times at the paper's 2 epochs).
MIN_STREAM_EPOCHS = 64


def marker_url(config: EntiGraphConfig, step: str) -> str:
    """Where a finished step's marker lives: <output_dir>/_steps/<step>.json (a `/` in the step name is `-`)."""
    return storage.join(config.output_dir, "_steps", step.replace("/", "-") + ".json")


def step_identity(config: EntiGraphConfig, kind: str, data: dict | None = None) -> str:
    """The hash a step's marker must match: its config sections and the data it reads (`data`)."""
    blob = json.dumps({"config": section_hash(config, _IGNORED[kind]), "data": data or {}}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stamp(result: dict) -> str:
    """What the steps after a step depend on: its identity and what it produced."""
    blob = json.dumps({"identity": result.get("identity"), **{k: result.get(k) for k in _PRODUCED}},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _done_earlier(config: EntiGraphConfig, step: str, identity: str) -> dict | None:
    url = marker_url(config, step)
    if not storage.exists(url):
        return None
    marker = json.loads(storage.read_text(url))
    return marker if marker.get("identity") == identity else None


def log(line: str) -> None:
    """A progress line of a workflow, on stdout at once."""
    print(line, flush=True)


def run_step(config: EntiGraphConfig, step: str, kind: str, fn: Callable[[], object], *,
             data: dict | None = None) -> dict:
    """Run `fn()` unless this step finished earlier with the same identity and no failures; record it.

    `kind` (one of STEPS) names the config sections the step depends on, `data` what it reads (input
    fingerprints, the stamps of the steps before it); `fn` returns a summary with `lines()` and optionally
    `rows`, `num_failed`, `synthetic_tokens_used`, `steps`, which the returned dict keeps with the step's
    `identity` and `stamp`."""
    identity = step_identity(config, kind, data)
    earlier = _done_earlier(config, step, identity)
    if earlier and not earlier["result"].get("num_failed"):
        finished = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(earlier["finished_at"]))
        log(f"[run] {step}: done earlier ({finished}), skipped")
        return earlier["result"]
    if earlier:
        log(f"[run] {step}: done earlier with {earlier['result']['num_failed']} failed; running it again to retry "
            "them")
    else:
        log(f"[run] {step}: starting")
    started = time.time()
    summary = fn()
    result = {"lines": summary.lines(), "wall_s": round(time.time() - started, 2), "identity": identity}
    for key in _PRODUCED:
        if hasattr(summary, key):
            result[key] = getattr(summary, key)
    result["stamp"] = stamp(result)
    storage.write_text(marker_url(config, step), json.dumps({
        "step": step, "identity": identity, "finished_at": time.time(), "result": result,
    }, indent=2, default=str))
    failed = f" with {result['num_failed']} failed (the next run retries them)" if result.get("num_failed") else ""
    log(f"[run] {step}: done in {result['wall_s']:.0f}s{failed}")
    for line in result["lines"]:
        log("      " + line)
    return result


@leased("run")
def run(config: EntiGraphConfig, until: str | None = None) -> dict[str, dict]:
    """synthesize -> train -> eval on one output_dir; `until` stops after the named step."""
    if until is not None and until not in STEPS:
        raise ConfigError(f"--until {until!r} is not a step. Fix: use one of {', '.join(STEPS)}.")
    ctx, _ = preflight(config, "run")  # every input of the three steps checked; the run resolved once
    ingest_only = config.train.corpus == "raw"
    control = control_config(config)

    def models() -> list[tuple[str, str]] | None:
        """What eval reads once training is done: with a control, base, the trained model, the positive control,
        then eval.models; else eval's own choice."""
        if control is None:
            return None
        chosen = models_to_evaluate(config)
        return chosen[:2] + [(RAW_CPT_LABEL, train_url(control, "model"))] + chosen[2:]

    fns = {
        "synthesize": lambda: synthesize(config, ingest_only=ingest_only, ctx=ctx),
        "train": lambda: run_train(config, ctx=ctx),
        "eval": lambda: run_eval(config, ctx=ctx, models=models()),
    }
    results: dict[str, dict] = {}
    data: dict = synthesis_data(ctx, ingest_only)
    for step in STEPS:
        results[step] = run_step(config, step, step, fns[step], data=data)
        data = {"after": results[step]["stamp"]}  # the next step depends on what this one produced
        if step == "train" and control is not None:
            # its own context: training reads its corpus (the documents) from ctx.config
            results["control"] = run_step(control, "train-raw-cpt-control", "train", lambda: run_train(control),
                                          data={"after": results["synthesize"]["stamp"]})
            data = {"after": [results["train"]["stamp"], results["control"]["stamp"]]}
        if step == until:
            break
    return results


def control_config(config: EntiGraphConfig) -> EntiGraphConfig | None:
    """The positive control `run` trains beside the configured corpus (run.raw_cpt_control_steps): Raw CPT on
    the documents alone, with the same hyperparameters, for its own number of steps; None when off."""
    steps = config.run.raw_cpt_control_steps
    if steps is None or config.train.corpus == "raw":
        return None
    return raw_cpt_config(config, f"control/raw-cpt-{steps}steps", steps)


def raw_cpt_config(config: EntiGraphConfig, name: str, steps: int) -> EntiGraphConfig:
    """Raw CPT (the documents alone, train's other settings) for `steps` optimizer steps in <output_dir>/<name>:
    the positive control of `run` and `sweep`. Its stream is repeated enough that the steps, not the stream's
    end, stop it."""
    return derive(without_streams(config), [f"train.name={name}", "train.corpus=raw", f"train.max_steps={steps}",
                           f"train.epochs={max(config.train.epochs, MIN_STREAM_EPOCHS)}",
                           "train.max_synthetic_tokens=null", "run.raw_cpt_control_steps=null"])


def synthesis_data(ctx: RunContext, ingest_only: bool = False) -> dict:
    """What synthesis reads besides its config: the input files as they are now, and whether it ingests only."""
    return {"inputs": ctx.input_identity(), "ingest_only": ingest_only}
