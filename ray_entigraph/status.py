"""`ray-entigraph status`: the state of every step of a run, from storage alone (no cluster needed).

Each step is done, done with failures, running, stale (it was running and its process is gone: the lease's
heartbeat stopped), failed, or not started. Synthesis shows its stages' committed totals (ledger.py); training
shows step k of N with the loss and an ETA from the recent steps' pace (its metrics); evaluation shows the
models done of those to evaluate (eval/progress.json). Whether anything is running is read from the lease
(lease.py): a heartbeat younger than lease.ttl_s, and on this machine a process that exists.
"""

from __future__ import annotations

import json

from ray_entigraph import storage
from ray_entigraph.api import run_config
from ray_entigraph.errors import EntiGraphError
from ray_entigraph.eval.launch import PROGRESS_FILE
from ray_entigraph.layout import Layout, train_url
from ray_entigraph.lease import holder
from ray_entigraph.ledger import format_duration, read_run_state
from ray_entigraph.train.metrics import read_metrics
from ray_entigraph.train.schedule import total_steps

STEPS = ("synthesize", "train", "eval")
# which commands run which step (the lease names the command that holds the folder)
RUNS = {"synthesize": {"synthesize", "run", "sweep", "ablate"}, "train": {"train", "run", "sweep", "ablate"},
        "eval": {"eval", "run", "sweep", "ablate"}}


def _marker(layout: Layout, step: str) -> dict | None:
    url = layout.step_marker_url(step)
    return json.loads(storage.read_text(url)) if storage.exists(url) else None


def _live(lease: dict | None, step: str) -> bool:
    return bool(lease and lease["alive"] and lease.get("command") in RUNS[step])


def _interrupted(lease: dict | None, step: str) -> str:
    """running while its command holds a live lease; stale otherwise (the process that was running it is gone)."""
    return "running" if _live(lease, step) else "stale"


def synthesis_step(layout: Layout, synthesis: dict, lease: dict | None) -> dict:
    run = synthesis["run"]
    failed = sum(st["num_failed"] for st in synthesis["stages"].values())
    out = {"failed_rows": failed}
    if _marker(layout, "synthesize") or run.get("state") == "finished":
        out["state"] = "done with failures" if failed else "done"
    elif run.get("state") == "running":
        out["state"] = _interrupted(lease, "synthesize")
        out["stage"] = run.get("stage")
    elif run.get("state") == "failed":
        out.update(state="failed", error=run.get("error"))
    else:
        out["state"] = "not started"
    return out


def training_step(config, layout: Layout, lease: dict | None) -> dict:
    folder = train_url(config)
    marker = _marker(layout, "train")
    lines = read_metrics(folder)
    mixture_url = storage.join(folder, "mixture.json")
    total = None
    if storage.exists(mixture_url):
        total = total_steps(config, json.loads(storage.read_text(mixture_url))["epoch_length"])
    out: dict = {"name": config.train.name, "total_steps": total}
    if lines:
        last = lines[-1]
        recent = [m["step_s"] for m in lines[-10:] if m.get("step_s")]
        out.update(step=last["step"], loss=last.get("loss"))
        if total and recent:
            out["eta_s"] = round(max(total - last["step"], 0) * sum(recent) / len(recent), 1)
    exported = storage.exists(storage.join(folder, "model", "config.json"))
    if marker or (exported and total is not None and out.get("step", 0) >= total):
        out["state"] = "done"
    elif lines or _live(lease, "train") and total is not None:
        out["state"] = _interrupted(lease, "train")
    else:
        out["state"] = "not started"
    return out


def evaluation_step(layout: Layout, lease: dict | None) -> dict:
    progress_url = layout.eval_url(PROGRESS_FILE)
    progress = json.loads(storage.read_text(progress_url)) if storage.exists(progress_url) else None
    out: dict = {}
    if progress:
        out.update(models_done=len(progress["done"]), models=len(progress["models"]))
    if _marker(layout, "eval") or (progress and len(progress["done"]) == len(progress["models"])
                                   and storage.exists(layout.eval_url("report.json"))):
        out["state"] = "done"
    elif progress:
        out["state"] = _interrupted(lease, "eval")
    else:
        out["state"] = "not started"
    return out


def run_status(output_dir: str) -> dict:
    """Every step's state and progress, the lease holder, and synthesis' per-stage totals."""
    layout = Layout(output_dir)
    if not storage.exists(layout.layout_url) and not storage.exists(layout.config_url):
        raise EntiGraphError(f"{output_dir!r} holds no run (neither _layout.json nor config.yaml). Fix: pass the "
                             "output_dir of a run.")
    synthesis = read_run_state(output_dir)
    config = run_config(output_dir)
    lease = holder(output_dir, config.lease.ttl_s)
    steps = {"synthesize": synthesis_step(layout, synthesis, lease), "train": training_step(config, layout, lease),
             "eval": evaluation_step(layout, lease)}
    if lease and lease["alive"]:
        state = f"running ({lease.get('command')})"
    elif any(s["state"] == "stale" for s in steps.values()):
        state = "stale"
    elif all(s["state"].startswith("done") for s in steps.values()):
        state = "finished"
    elif any(s["state"] == "failed" for s in steps.values()):
        state = "failed"
    else:
        state = "idle"
    return {"output_dir": output_dir, "state": state, "lease": lease, "steps": steps, **synthesis}


def step_lines(status: dict) -> list[str]:
    """One line per step: what `status` prints above the synthesis table."""
    lines = []
    for name, st in status["steps"].items():
        detail = ""
        if name == "synthesize":
            detail = (f"stage {st['stage']}" if st.get("stage") else "") + (
                f"{st['failed_rows']} failed rows" if st.get("failed_rows") else "")
            if st.get("error"):
                detail = st["error"]
        elif name == "train" and st.get("step") is not None:
            detail = f"step {st['step']} of {st.get('total_steps') or '?'}"
            if st.get("loss") is not None:
                detail += f", loss {st['loss']:.4f}"
            if st.get("eta_s") is not None and st["state"] != "done":
                detail += f", ETA {format_duration(st['eta_s'])}" + (" once resumed" if st["state"] == "stale" else "")
        elif name == "eval" and st.get("models"):
            detail = f"{st['models_done']} of {st['models']} models"
        lines.append(f"  {name:<11} {st['state']:<19} {detail}".rstrip())
    return lines
