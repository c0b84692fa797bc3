"""Steps with markers, and `run`: synthesize -> train -> eval on one output_dir.

A step that finishes writes a marker, <output_dir>/_steps/<step>.json, holding the hash of the config
sections it depends on and its summary. A re-run skips a step whose marker matches, so a run killed between
steps (or during one) continues where it stopped; a step killed midway resumes from its own committed work
(shards, checkpoints). Change a setting a step depends on and that step and the ones after it run again.
`sweep` and `ablate` run their arms' trainings and evaluations through `run_step` too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from ray_entigraph import storage
from ray_entigraph.config import EntiGraphConfig, section_hash
from ray_entigraph.errors import ConfigError
from ray_entigraph.eval.launch import run_eval
from ray_entigraph.pipeline import synthesize
from ray_entigraph.train.launch import run_train
from ray_entigraph.workflows.preflight import preflight

# top-level config sections each kind of step does NOT depend on
_IGNORED = {
    "synthesize": ("train", "eval", "sweep", "ablation"),
    "train": ("eval", "sweep", "ablation"),
    "eval": ("sweep", "ablation"),
}

STEPS = ("synthesize", "train", "eval")


def marker_url(config: EntiGraphConfig, step: str) -> str:
    """Where a finished step's marker lives: <output_dir>/_steps/<step>.json (a `/` in the step name is `-`)."""
    return storage.join(config.output_dir, "_steps", step.replace("/", "-") + ".json")


def _done_earlier(config: EntiGraphConfig, step: str, kind: str) -> dict | None:
    url = marker_url(config, step)
    if not storage.exists(url):
        return None
    marker = json.loads(storage.read_text(url))
    return marker if marker.get("config_hash") == section_hash(config, _IGNORED[kind]) else None


def log(line: str) -> None:
    """A progress line of a workflow, on stdout at once."""
    print(line, flush=True)


def run_step(config: EntiGraphConfig, step: str, kind: str, fn: Callable[[], object]) -> dict:
    """Run `fn()` unless this step finished earlier with the same relevant config; record it when done.

    `kind` (one of STEPS) names the config sections the step depends on; `fn` returns a summary with
    `lines()` and optionally `synthetic_tokens_used`, `rows`, `steps`, which the returned dict keeps."""
    earlier = _done_earlier(config, step, kind)
    if earlier:
        finished = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(earlier["finished_at"]))
        log(f"[run] {step}: done earlier ({finished}), skipped")
        return earlier["result"]
    log(f"[run] {step}: starting")
    started = time.time()
    summary = fn()
    result = {"lines": summary.lines(), "wall_s": round(time.time() - started, 2)}
    for key in ("synthetic_tokens_used", "rows", "steps"):
        if hasattr(summary, key):
            result[key] = getattr(summary, key)
    storage.write_text(marker_url(config, step), json.dumps({
        "step": step, "config_hash": section_hash(config, _IGNORED[kind]), "finished_at": time.time(),
        "result": result,
    }, indent=2, default=str))
    log(f"[run] {step}: done in {result['wall_s']:.0f}s")
    for line in result["lines"]:
        log("      " + line)
    return result


def run(config: EntiGraphConfig, until: str | None = None) -> dict[str, dict]:
    """synthesize -> train -> eval on one output_dir; `until` stops after the named step."""
    if until is not None and until not in STEPS:
        raise ConfigError(f"--until {until!r} is not a step. Fix: use one of {', '.join(STEPS)}.")
    ctx, _ = preflight(config, "run")  # every input of the three steps checked; the run resolved once
    fns = {
        "synthesize": lambda: synthesize(config, ingest_only=config.train.corpus == "raw", ctx=ctx),
        "train": lambda: run_train(config, ctx=ctx),
        "eval": lambda: run_eval(config, ctx=ctx),
    }
    results = {}
    for step in STEPS:
        results[step] = run_step(config, step, step, fns[step])
        if step == until:
            break
    return results
