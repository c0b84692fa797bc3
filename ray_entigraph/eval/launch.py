"""`ray-entigraph eval`: which models, which questions and texts, one Ray task per model, then the reports.
The one home of Ray in evaluation; scoring is in `scoring.py`, report building in `report.py`."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ray_entigraph import storage
from ray_entigraph.config import EntiGraphConfig, InputConfig
from ray_entigraph.errors import ConfigError, InputError, StageFailed, root_cause
from ray_entigraph.eval.evaluate import evaluate_model
from ray_entigraph.eval.quality import load_questions, resolve_questions_url
from ray_entigraph.eval.report import accuracy_plot, markdown, perplexity_plot, summarize, verdict_lines
from ray_entigraph.inputs import list_input_files, records_from_file
from ray_entigraph.layout import base_model_name, train_url
from ray_entigraph.prompts import load_prompt_set
from ray_entigraph.runtime import init_ray

if TYPE_CHECKING:
    from ray_entigraph.context import RunContext

logger = logging.getLogger(__name__)

BASE_LABEL = "base"
QA_PROMPTS = "eval-cot-v2"  # the generative protocol's few-shot chain-of-thought prompt set


PROGRESS_FILE = "progress.json"  # the models to evaluate and those done: what `status` shows of a running eval


@dataclass
class EvalSummary:
    rows: list[dict]
    report_url: str
    markdown_url: str
    plots: dict[str, str]
    wall_s: float

    def lines(self) -> list[str]:
        out = []
        for r in self.rows:
            acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
            ci = ("" if not r["accuracy_ci95"]
                  else f" [{100 * r['accuracy_ci95'][0]:.1f}, {100 * r['accuracy_ci95'][1]:.1f}]")
            delta = "" if "delta_vs_base" not in r else f", {100 * r['delta_vs_base']:+.1f} pts vs base"
            ob = "" if r.get("open_book_accuracy") is None else f", open-book {100 * r['open_book_accuracy']:.1f}%"
            ppl = (f", ppl knowledge {_f(r['perplexity_knowledge'])} / forgetting {_f(r['perplexity_forgetting'])}")
            out.append(f"{r['label']:<16} closed-book {acc}{ci}{delta}{ob}{ppl}")
        out += verdict_lines(self.rows)
        out += [f"report           {self.markdown_url}", f"json             {self.report_url}"]
        out += [f"plot             {url}" for url in self.plots.values()]
        return out


def _f(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def export_problem(model_url: str) -> str | None:
    """Why an exported Hugging Face model folder is not whole (None when it is): its config, and every weight
    file its safetensors index lists (or the single model.safetensors)."""
    if not storage.exists(storage.join(model_url, "config.json")):
        return "has no config.json (the export did not run or did not finish)"
    index = storage.join(model_url, "model.safetensors.index.json")
    if storage.exists(index):
        files = sorted(set(json.loads(storage.read_text(index)).get("weight_map", {}).values()))
        missing = [f for f in files if not storage.exists(storage.join(model_url, f))]
        return f"lacks weight files {missing} that its index lists" if missing else None
    if not storage.exists(storage.join(model_url, "model.safetensors")):
        return "has no model.safetensors (the export did not finish)"
    return None


def models_to_evaluate(config: EntiGraphConfig) -> list[tuple[str, str]]:
    """(label, model path) in report order: base, the trained model when it exists, then eval.models."""
    models = []
    if config.eval.include_base:
        models.append((BASE_LABEL, base_model_name(config)))
    trained = train_url(config, "model")
    # a training that started (its mixture is written) must have exported a whole model; none started: base only
    if config.eval.include_trained and storage.exists(train_url(config, "mixture.json")):
        problem = export_problem(trained)
        if problem:
            raise InputError(f"The trained model {trained!r} {problem}. Fix: run `ray-entigraph train` with the same "
                             "config to finish it (it resumes from its last checkpoint), or set "
                             "eval.include_trained=false.")
        models.append(("trained" if config.train.name == "train" else config.train.name.replace("/", "-"), trained))
    for spec in config.eval.models:
        label, _, path = spec.rpartition("=")
        models.append((label or path.rstrip("/").rsplit("/", 1)[-1], path))
    labels = [m[0] for m in models]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"Two evaluated models share a label ({labels}). "
                          "Fix: name them in eval.models as label=path.")
    if not models:
        raise ConfigError("Nothing to evaluate: eval.include_base and eval.include_trained are off and eval.models "
                          "is empty, or training has not exported a model yet. Fix: run `ray-entigraph train` first or "
                          "list models in eval.models.")
    return models


def _texts(cfg: InputConfig, limit: int, files: list[tuple[str, str]] | None = None) -> list[str]:
    """Up to `limit` texts of an input (`files`: its listing, when the run has it already)."""
    texts: list[str] = []
    for url, fmt in files if files is not None else list_input_files(cfg):
        texts += [r["text"] for r in records_from_file(url, fmt, cfg) if not r.get("error") and r.get("text")]
        if len(texts) >= limit:
            break
    return texts[:limit]


def _progress(out_url: str, models: list[tuple[str, str]], done: list[str], started: float) -> None:
    """eval/progress.json: the models to evaluate and those done (`status` reads it)."""
    storage.write_text(storage.join(out_url, PROGRESS_FILE), json.dumps(
        {"models": [m for m, _ in models], "done": done, "started_at": started, "updated_at": time.time()}))


def run_eval(config: EntiGraphConfig, models: list[tuple[str, str]] | None = None, out_url: str | None = None,
             ctx: RunContext | None = None) -> EvalSummary:
    """Evaluate every model on the run's questions and texts; `ctx`: the run's context when already resolved."""
    import ray  # lazy: Ray loads only when evaluation runs

    started = time.time()
    ec = config.eval
    out_url = out_url or storage.join(config.output_dir, "eval")
    models = models or models_to_evaluate(config)
    # everything a worker needs is read and checked here, before any model loads
    questions_url = resolve_questions_url(ec.questions, config.input.path)
    questions = load_questions(questions_url, ec.max_questions) if questions_url else []
    input_files = ctx.input_files if ctx is not None else None
    knowledge = _texts(config.input, ec.perplexity_texts, input_files) if ec.perplexity_texts else []
    forgetting = _texts(InputConfig(path=ec.forgetting_text), ec.perplexity_texts) if ec.perplexity_texts else []
    storage.check_writable(out_url)
    if ec.protocol == "generative":
        load_prompt_set(QA_PROMPTS)  # a broken prompt file fails here, not in a worker
    print(f"[eval] {len(models)} model(s), {len(questions)} questions ({ec.protocol}), {len(knowledge)} documents and "
          f"{len(forgetting)} held-out texts for perplexity", flush=True)

    init_ray(config)
    _progress(out_url, models, [], started)
    remote = ray.remote(evaluate_model).options(num_cpus=ec.num_cpus, num_gpus=ec.num_gpus, max_retries=1)
    args = (ray.put(questions), ray.put(knowledge), ray.put(forgetting))
    pending, results = {}, {}
    queue = list(models)
    while queue or pending:
        while queue and len(pending) < ec.max_parallel:
            label, path = queue.pop(0)
            open_book = ec.open_book_reference and label == BASE_LABEL
            pending[remote.remote(config.model_dump_json(), label, path, *args, open_book)] = label
        done, _ = ray.wait(list(pending), num_returns=1)
        label = pending.pop(done[0])
        try:
            results[label] = ray.get(done[0])
        except Exception as exc:  # noqa: BLE001 - one model failing names the model and the cause
            raise StageFailed(f"Evaluating model {label!r} failed: {root_cause(exc)}") from exc
        r = results[label]
        _progress(out_url, models, list(results), started)
        acc = "-" if r.get("accuracy") is None else f"{100 * r['accuracy']:.1f}%"
        print(f"[eval] {label}: closed-book {acc} in {r['wall_s']}s ({len(results)}/{len(models)} models, "
              f"{time.time() - started:.0f}s elapsed)", flush=True)

    ordered = [results[label] for label, _ in models]
    rows = summarize(ordered, BASE_LABEL if any(label == BASE_LABEL for label, _ in models) else None)
    plots = {}
    for name, png in (("accuracy", accuracy_plot(rows, max((len(q.options) for q in questions), default=4))),
                      ("perplexity", perplexity_plot(rows))):
        if png:
            plots[name] = storage.join(out_url, f"{name}.png")
            storage.write_bytes(plots[name], png)
    meta = {"output_dir": config.output_dir, "questions_url": questions_url, "protocol": ec.protocol,
            "knowledge_texts": len(knowledge), "forgetting_texts": len(forgetting),
            "forgetting_source": ec.forgetting_text, "config_hash": config.config_hash(),
            "wall_s": round(time.time() - started, 2)}
    report_url, md_url = storage.join(out_url, "report.json"), storage.join(out_url, "report.md")
    storage.write_text(report_url, json.dumps({"meta": meta, "summary": rows, "models": ordered}, indent=2))
    storage.write_text(md_url, markdown(rows, ordered, questions, meta, plots))
    return EvalSummary(rows=rows, report_url=report_url, markdown_url=md_url, plots=plots, wall_s=time.time() - started)
