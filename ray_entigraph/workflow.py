"""The whole mission as steps: `run` (synthesize -> train -> eval) and `sweep` (the paper's scaling
experiment at the user's scale). Composition only; every step is a resumable command of its own.

A step that finishes writes a marker, <output_dir>/_steps/<step>.json, holding the hash of the config
sections it depends on and its summary. A re-run skips a step whose marker matches, so a run killed between
steps (or during one) continues where it stopped; a step killed midway resumes from its own committed work
(shards, checkpoints). Change a setting a step depends on and that step and the ones after it run again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

from ray_entigraph import storage
from ray_entigraph.config import EntiGraphConfig, derive, section_hash

# top-level config sections each step does NOT depend on
_IGNORED = {
    "synthesize": ("train", "eval", "sweep", "ablation"),
    "train": ("eval", "sweep", "ablation"),
    "eval": ("sweep", "ablation"),
}


def _marker_url(config: EntiGraphConfig, step: str) -> str:
    return storage.join(config.output_dir, "_steps", step.replace("/", "-") + ".json")


def _done_earlier(config: EntiGraphConfig, step: str, kind: str) -> dict | None:
    url = _marker_url(config, step)
    if not storage.exists(url):
        return None
    marker = json.loads(storage.read_text(url))
    return marker if marker.get("config_hash") == section_hash(config, _IGNORED[kind]) else None


def _log(line: str) -> None:
    print(line, flush=True)


def run_step(config: EntiGraphConfig, step: str, kind: str, fn) -> dict:
    """Run `fn()` unless this step finished earlier with the same relevant config; record it when done."""
    earlier = _done_earlier(config, step, kind)
    if earlier:
        _log(f"[run] {step}: done earlier ({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(earlier['finished_at']))}),"
            " skipped")
        return earlier["result"]
    _log(f"[run] {step}: starting")
    started = time.time()
    summary = fn()
    result = {"lines": summary.lines(), "wall_s": round(time.time() - started, 2)}
    for key in ("synthetic_tokens_used", "rows", "steps"):
        if hasattr(summary, key):
            result[key] = getattr(summary, key)
    storage.write_text(_marker_url(config, step), json.dumps({
        "step": step, "config_hash": section_hash(config, _IGNORED[kind]), "finished_at": time.time(), "result": result,
    }, indent=2, default=str))
    _log(f"[run] {step}: done in {result['wall_s']:.0f}s")
    for line in result["lines"]:
        _log("      " + line)
    return result


STEPS = ("synthesize", "train", "eval")


def run(config: EntiGraphConfig, until: str | None = None) -> dict[str, dict]:
    """synthesize -> train -> eval on one output_dir; `until` stops after the named step."""
    from ray_entigraph.eval.launch import run_eval
    from ray_entigraph.pipeline import synthesize
    from ray_entigraph.train.launch import run_train

    if until is not None and until not in STEPS:
        raise ValueError(f"--until {until!r} is not a step; steps are {', '.join(STEPS)}.")
    fns = {
        "synthesize": lambda: synthesize(config, ingest_only=config.train.corpus == "raw"),
        "train": lambda: run_train(config),
        "eval": lambda: run_eval(config),
    }
    results = {}
    for step in STEPS:
        results[step] = run_step(config, step, step, fns[step])
        if step == until:
            break
    return results


# ---------------------------------------------------------------------------------------------------- sweep

@dataclass
class SweepSummary:
    points: list[dict]
    fit: dict | None
    report_url: str
    plot_url: str | None
    wall_s: float
    lines_extra: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{p['arm']:<24} {p['synthetic_tokens']:>9} tokens  accuracy {100 * p['accuracy']:.1f}% "
               f"[{100 * p['ci95'][0]:.1f}, {100 * p['ci95'][1]:.1f}]" for p in self.points]
        if self.fit:
            terms = "".join(f" {'-' if b >= 0 else '+'} {abs(b):.2f}*{r:.6f}^x" for b, r in self.fit["terms"])
            out.append(f"fit              y(x) = {self.fit['a']:.2f}{terms}  (x in tokens, rmse {self.fit['rmse']:.2f})")
            if not self.fit["rises"]:
                out.append("                 accuracy does not rise with synthetic tokens here: the fitted curve "
                           "describes no gain")
        return out + self.lines_extra + [f"report           {self.report_url}"] + (
            [f"plot             {self.plot_url}"] if self.plot_url else [])


def sweep_budgets(config: EntiGraphConfig, available_blocks: int) -> list[int]:
    """Token budgets: the configured ones, or `num_budgets` halvings down from the whole corpus (whole blocks,
    at least one block, duplicates removed)."""
    block = config.train.block_len
    if config.sweep.budgets:
        return sorted(set(config.sweep.budgets))
    blocks = {max(1, available_blocks >> k) for k in range(config.sweep.num_budgets)}
    return sorted(b * block for b in blocks)


def sweep(config: EntiGraphConfig) -> SweepSummary:
    """EntiGraph at several synthetic token budgets, plus the baselines, trained and evaluated alike."""
    from ray_entigraph import schema
    from ray_entigraph.eval.launch import BASE_LABEL, run_eval
    from ray_entigraph.pipeline import init_ray, synthesize
    from ray_entigraph.train.data import base_model_name, run_pack, train_url
    from ray_entigraph.train.launch import run_train

    started = time.time()
    if config.synthesis.augmenter != "entigraph":
        raise ValueError("sweep needs synthesis.augmenter=entigraph (the rephrase baseline is one of its arms). "
                         "Fix: use an EntiGraph config.")
    run_step(config, "synthesize", "synthesize", lambda: synthesize(config))
    init_ray(config)
    available = run_pack(config).get(schema.SYNTHETIC_SOURCE, 0)
    arms: list[tuple[str, EntiGraphConfig]] = []
    for budget in sweep_budgets(config, available):
        arms.append((f"entigraph-{budget}", derive(config, [f"train.name=sweep/entigraph-{budget}",
                                                            f"train.max_synthetic_tokens={budget}"])))
    if "raw" in config.sweep.baselines:
        arms.append(("raw-cpt", derive(config, ["train.name=sweep/raw-cpt", "train.corpus=raw",
                                                "train.max_synthetic_tokens=null"])))
    if "rephrase" in config.sweep.baselines:
        rephrase = derive(config, [f"output_dir={storage.join(config.output_dir, 'sweep', 'rephrase')}",
                                   "synthesis.augmenter=rephrase", "synthesis.prompts=rephrase-v1",
                                   "train.max_synthetic_tokens=null"])
        run_step(rephrase, "synthesize", "synthesize", lambda: synthesize(rephrase))
        arms.append(("rephrase", rephrase))
    tokens = {}
    for name, arm in arms:
        # arms on the main output_dir keep their markers apart by name; the rephrase arm has its own output_dir
        step = f"sweep/train-{name}" if arm.output_dir == config.output_dir else "train"
        tokens[name] = run_step(arm, step, "train", lambda arm=arm: run_train(arm))["synthetic_tokens_used"]
    models = [(BASE_LABEL, base_model_name(config))]
    models += [(name, train_url(arm, "model")) for name, arm in arms]
    eval_out = storage.join(config.output_dir, "sweep", "eval")
    ev = run_step(config, "sweep/eval", "eval", lambda: run_eval(config, models=models, out_url=eval_out))
    report = json.loads(storage.read_text(storage.join(eval_out, "report.json")))
    return _sweep_report(config, report, tokens, time.time() - started, ev)


def _sweep_report(config: EntiGraphConfig, report: dict, tokens: dict[str, int], wall_s: float, ev: dict) -> SweepSummary:
    from ray_entigraph.eval.curve import fit, terms_for

    rows = {r["label"]: r for r in report["summary"]}
    points = []
    for label, row in rows.items():
        if row["accuracy"] is None:
            continue
        arm = "entigraph" if label.startswith("entigraph-") else label
        points.append({"arm": label, "series": arm, "synthetic_tokens": 0 if label == "base" else tokens.get(label, 0),
                       "accuracy": row["accuracy"], "ci95": row["accuracy_ci95"]})
    curve_pts = sorted((p["synthetic_tokens"], p["accuracy"]) for p in points if p["series"] in ("entigraph", "base"))
    n_terms = terms_for(len(curve_pts))
    fitted = None
    if n_terms:
        f = fit([x for x, _ in curve_pts], [100 * y for _, y in curve_pts], n_terms)
        fitted = {"a": f.a, "terms": [list(t) for t in f.terms], "rmse": f.rmse, "num_points": len(curve_pts),
                  # the paper's shape: a gain (every b_i > 0) toward an asymptote that is an accuracy
                  "rises": all(b > 0 for b, _ in f.terms) and 0.0 <= f.a <= 100.0}
    out = storage.join(config.output_dir, "sweep")
    plot_url = _sweep_plot(points, fitted, storage.join(out, "accuracy_vs_tokens.png"))
    report_url = storage.join(out, "sweep.json")
    storage.write_text(report_url, json.dumps({"points": points, "fit": fitted, "eval_report": storage.join(out, "eval", "report.md"),
                                               "wall_s": wall_s}, indent=2))
    return SweepSummary(points=points, fit=fitted, report_url=report_url, plot_url=plot_url, wall_s=wall_s,
                        lines_extra=[f"eval report      {storage.join(out, 'eval', 'report.md')}"])


SERIES_STYLES = {"base": ("k", "s"), "entigraph": ("#4C72B0", "o"), "raw-cpt": ("#C44E52", "^"), "rephrase": ("#55A868", "D"),
                 "grounded": ("#8172B2", "v"), "repaired": ("#937860", "<"), "dedup": ("#DA8BC3", ">"),
                 "judged": ("#2CA02C", "d"), "freeform": ("#CCB974", "P"), "temperature": ("#64B5CD", "X"),
                 "entigraph+raw": ("#8C8C8C", "*")}


def _sweep_plot(points: list[dict], fitted: dict | None, url: str,
                title: str = "Accuracy against synthetic tokens (95% bootstrap CI)") -> str | None:
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ray_entigraph.eval.curve import CurveFit

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = SERIES_STYLES
    for series in dict.fromkeys(p["series"] for p in points):
        pts = sorted((p for p in points if p["series"] == series), key=lambda p: p["synthetic_tokens"])
        color, marker = styles.get(series, ("grey", "x"))
        xs = [p["synthetic_tokens"] for p in pts]
        ys = [100 * p["accuracy"] for p in pts]
        err = [[y - 100 * p["ci95"][0] for y, p in zip(ys, pts)], [100 * p["ci95"][1] - y for y, p in zip(ys, pts)]]
        ax.errorbar(xs, ys, yerr=err, fmt=marker, color=color, capsize=3, label=series)
    if fitted:
        curve = CurveFit(fitted["a"], tuple(tuple(t) for t in fitted["terms"]), fitted["rmse"])
        xmax = max(p["synthetic_tokens"] for p in points if p["series"] in ("entigraph", "base")) or 1
        xs = np.linspace(0, xmax * 1.05, 200)
        note = "" if fitted["rises"] else ", no gain"
        ax.plot(xs, curve(xs), color="#4C72B0", alpha=0.6,
                label=f"mixture-of-exponentials fit ({len(fitted['terms'])} term{note})")
    ax.set_xlabel("synthetic tokens trained on (per epoch)")
    ax.set_ylabel("closed-book accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    from ray_entigraph.eval.report import png_bytes

    storage.write_bytes(url, png_bytes(fig))
    return url


# ------------------------------------------------------------------------------------------------- ablation

# Arm settings of `ablate` (dotted overrides on top of the user's config; `None` marks an arm that
# synthesizes into its own output_dir because its synthetic rows differ).
def ablation_overrides(config: EntiGraphConfig, variant: str) -> tuple[list[str], str | None]:
    """(overrides, own output_dir subfolder or None) of one ablation arm."""
    a = config.ablation
    curate_off = ["curate.enabled=false"]
    return {
        "entigraph": (curate_off, None),
        "grounded": (["curate.enabled=true", f"curate.min_grounding={a.min_grounding}"], None),
        "repaired": (["curate.enabled=true", f"curate.min_sentence_grounding={a.min_sentence_grounding}"], None),
        "dedup": (["curate.enabled=true", "curate.dedup=true"], None),
        "judged": (["curate.enabled=true", "curate.judge=true", f"curate.min_judge_score={a.min_judge_score}"], None),
        "freeform": (curate_off + [f"synthesis.prompts={a.freeform_prompts}"], "freeform"),
        "temperature": (curate_off + [f"synthesis.sampling.temperature={a.temperature}"], f"temperature-{a.temperature:g}"),
        "entigraph+raw": (curate_off + ["train.corpus=synthetic+raw"], None),
        "raw-cpt": (curate_off + ["train.corpus=raw"], None),
    }[variant]


def ablation_budgets(common_blocks: int, block_len: int, num_budgets: int) -> list[int]:
    """Token budgets every arm can fill: the largest (whole blocks), then halvings, ascending."""
    blocks = sorted({max(1, common_blocks >> k) for k in range(num_budgets)})
    return [b * block_len for b in blocks]


def equal_steps(config: EntiGraphConfig, budget_tokens: int) -> int:
    """Optimizer steps of `ablation.epochs` (else `train.epochs`) over a budget (replay blocks replace synthetic
    ones): every arm of that budget trains exactly this many steps, however long its own stream is."""
    blocks = max(budget_tokens // config.train.block_len, 1)
    epochs = config.ablation.epochs or config.train.epochs
    return max(epochs * blocks // config.train.global_batch_size, 1)


@dataclass
class AblationSummary:
    rows: list[dict]
    report_url: str
    plot_url: str | None
    wall_s: float
    arms_plot_url: str | None = None

    def lines(self) -> list[str]:
        def delta(r, key):
            if r.get(key) is None:
                return "-"
            lo, hi = r[f"{key}_ci95"]
            return f"{100 * r[key]:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"

        out = [f"{'arm':<24} {'tokens':>7} {'steps':>5} {'seeds':>5}  {'accuracy [95% CI]':<20} {'vs base, pts':<20} "
               f"{'vs entigraph, pts':<20} {'verdict':<16} {'ppl docs':>8} {'ppl held-out':>12}"]
        for r in self.rows:
            ppl = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
            acc = f"{100 * r['accuracy']:.1f}% [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"
            out.append(f"{r['arm']:<24} {r['synthetic_tokens']:>7} {r['steps']:>5} {len(r['seeds']) or '-':>5}  {acc:<20} "
                       f"{delta(r, 'delta_vs_base'):<20} {delta(r, 'delta_vs_entigraph'):<20} "
                       f"{r.get('verdict_vs_entigraph', '-'):<16} {ppl(r['perplexity_knowledge']):>8} "
                       f"{ppl(r['perplexity_forgetting']):>12}")
        return out + [f"report           {self.report_url}"] + [
            f"plot             {u}" for u in (self.plot_url, self.arms_plot_url) if u]


def ablate(config: EntiGraphConfig) -> AblationSummary:
    """Synthesis variants and filters trained at equal synthetic tokens and equal steps, evaluated alike."""
    from ray_entigraph import schema
    from ray_entigraph.eval.launch import BASE_LABEL, run_eval
    from ray_entigraph.pipeline import init_ray, synthesize
    from ray_entigraph.train.data import base_model_name, run_pack, train_url
    from ray_entigraph.train.launch import run_train

    started = time.time()
    if config.synthesis.augmenter != "entigraph":
        raise ValueError("ablate needs synthesis.augmenter=entigraph. Fix: use an EntiGraph config.")
    run_step(config, "synthesize", "synthesize", lambda: synthesize(config))
    arms: dict[str, EntiGraphConfig] = {}
    for variant in config.ablation.variants:
        overrides, own_dir = ablation_overrides(config, variant)
        if own_dir:
            overrides = [f"output_dir={storage.join(config.output_dir, 'ablation', own_dir)}"] + overrides
        arm = derive(config, overrides)
        if arm.output_dir != config.output_dir or arm.curate.enabled:
            # its own synthetic rows, or a curated copy of the main ones (synthesis itself is done and skipped)
            step = "synthesize" if arm.output_dir != config.output_dir else f"ablation/curate-{variant}"
            run_step(arm, step, "synthesize", lambda arm=arm: synthesize(arm))
        arms[variant] = arm
    init_ray(config)
    available = {v: run_pack(arm).get(schema.SYNTHETIC_SOURCE, 0) for v, arm in arms.items() if v != "raw-cpt"}
    common = min(available.values()) if available else 0
    _log(f"[ablate] synthetic blocks each arm can train on: {available}; budget {common} blocks "
         f"({common * config.train.block_len} tokens), {equal_steps(config, common * config.train.block_len)} steps per arm")
    if not common:
        raise ValueError(f"ablate: an arm has no synthetic blocks to train on ({available}). Fix: synthesize more "
                         "(plan.*) or loosen the curate thresholds (ablation.min_grounding).")
    runs: list[AblationRun] = []
    for budget in ablation_budgets(common, config.train.block_len, config.ablation.num_budgets):
        steps = equal_steps(config, budget)
        for seed in config.ablation.seeds:
            for variant, arm in arms.items():
                # the run seed's arms keep plain names (and train.seed unset), so adding seeds reuses them
                name = f"{variant}-{budget}" + ("" if seed == config.seed else f"-seed{seed}")
                runs.append(AblationRun(name, variant, budget, seed, steps, derive(arm, [
                    f"train.name=ablation/{name.replace('+', '-plus-')}", f"train.max_steps={steps}",
                    # a stream long enough for every arm to reach `steps` (Raw CPT's is short)
                    f"train.epochs={max(config.train.epochs, 64)}",
                    f"train.max_synthetic_tokens={'null' if variant == 'raw-cpt' else budget}",
                    f"train.seed={'null' if seed == config.seed else seed}",
                ])))
    tokens = {}
    for run in runs:
        arm = run.config
        step = f"ablation/train-{run.name}" if arm.output_dir == config.output_dir else f"ablation-train-{run.name}"
        tokens[run.name] = run_step(arm, step, "train", lambda arm=arm: run_train(arm))["synthetic_tokens_used"]
    models = [(BASE_LABEL, base_model_name(config))] + [(run.name, train_url(run.config, "model")) for run in runs]
    eval_out = storage.join(config.output_dir, "ablation", "eval")
    # the step is named by its models: other arms or budgets are another evaluation, not "done earlier"
    models_id = hashlib.blake2b(json.dumps(models).encode(), digest_size=4).hexdigest()
    run_step(config, f"ablation/eval-{models_id}", "eval", lambda: run_eval(config, models=models, out_url=eval_out))
    report = json.loads(storage.read_text(storage.join(eval_out, "report.json")))
    return _ablation_report(config, report, runs, tokens, time.time() - started)


@dataclass(frozen=True)
class AblationRun:
    """One training of the ablation: an arm at a budget with a training seed."""
    name: str
    variant: str
    budget: int
    seed: int
    steps: int
    config: EntiGraphConfig | None = None


REFERENCE_ARM = "entigraph"  # every other arm is compared with the unfiltered EntiGraph arm of its budget


def verdict(ci95: tuple[float, float] | list[float] | None) -> str:
    """What a paired interval says: the change is real only when the interval excludes zero."""
    if not ci95:
        return "-"
    return "helped" if ci95[0] > 0 else "hurt" if ci95[1] < 0 else "within interval"


def aggregate_arms(questions: dict[str, list[dict]], groups: dict[str, list[str]]) -> dict[str, list[dict]]:
    """Per arm, its models' answers averaged per question over seeds: [{"qid", "correct": mean over seeds}].
    Resampling these questions keeps both the pairing across arms and the seeds' spread inside each question."""
    out = {}
    for arm, labels in groups.items():
        per_q: dict[str, list[float]] = {}
        for label in labels:
            for q in questions[label]:
                per_q.setdefault(q["qid"], []).append(float(q["correct"]))
        out[arm] = [{"qid": qid, "correct": sum(v) / len(v)} for qid, v in per_q.items()]
    return out


def _ablation_report(config: EntiGraphConfig, report: dict, runs: list[AblationRun], tokens: dict[str, int],
                     wall_s: float) -> AblationSummary:
    from ray_entigraph.eval.report import bootstrap_ci, paired_delta

    by_label = {r["label"]: r for r in report["summary"]}
    questions = {m["label"]: m["questions"] for m in report["models"]}
    # one row per (variant, budget): its seeds' models together
    groups: dict[str, list[AblationRun]] = {"base": []}
    for run in runs:
        if run.name in questions and by_label[run.name]["accuracy"] is not None:
            groups.setdefault(f"{run.variant}-{run.budget}", []).append(run)
    answers = aggregate_arms(questions, {"base": ["base"], **{arm: [r.name for r in rs] for arm, rs in groups.items() if rs}})
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    rows = []
    for arm, rs in groups.items():
        labels = [r.name for r in rs] or ["base"]
        if arm not in answers or any(by_label.get(label) is None for label in labels):
            continue
        variant = rs[0].variant if rs else "base"
        correct = [q["correct"] for q in answers[arm]]
        vs_base = paired_delta(answers[arm], answers["base"]) if rs else None
        reference = f"{REFERENCE_ARM}-{rs[0].budget}" if rs else None
        vs_ref = (paired_delta(answers[arm], answers[reference])
                  if rs and variant != REFERENCE_ARM and reference in answers else None)
        ppl = lambda key: mean([by_label[label][key] for label in labels if by_label[label][key] is not None])  # noqa: E731
        rows.append({"arm": arm, "variant": variant, "seeds": [r.seed for r in rs],
                     "synthetic_tokens": tokens.get(labels[0], 0), "steps": rs[0].steps if rs else 0,
                     "accuracy": mean(correct), "ci95": list(bootstrap_ci(correct)),
                     "accuracy_per_seed": [by_label[label]["accuracy"] for label in labels],
                     "delta_vs_base": vs_base[0] if vs_base else None,
                     "delta_vs_base_ci95": list(vs_base[1]) if vs_base else None,
                     "delta_vs_entigraph": vs_ref[0] if vs_ref else None,
                     "delta_vs_entigraph_ci95": list(vs_ref[1]) if vs_ref else None,
                     "verdict_vs_entigraph": verdict(vs_ref[1]) if vs_ref else "-",
                     "perplexity_knowledge": ppl("perplexity_knowledge"),
                     "perplexity_forgetting": ppl("perplexity_forgetting")})
    out = storage.join(config.output_dir, "ablation")
    points = [{"arm": r["arm"], "series": r["variant"], "synthetic_tokens": r["synthetic_tokens"],
               "accuracy": r["accuracy"], "ci95": r["ci95"]} for r in rows]
    plot_url = _sweep_plot(points, None, storage.join(out, "accuracy_vs_tokens.png"),
                           title="Ablation: accuracy against synthetic tokens (95% bootstrap CI)")
    arms_url = _arms_plot(rows, storage.join(out, "arms.png"))
    report_url = storage.join(out, "ablation.json")
    storage.write_text(report_url, json.dumps({"rows": rows, "eval_report": storage.join(out, "eval", "report.md"),
                                               "plots": [plot_url, arms_url], "wall_s": wall_s}, indent=2))
    return AblationSummary(rows=rows, report_url=report_url, plot_url=plot_url, wall_s=wall_s, arms_plot_url=arms_url)


def _arms_plot(rows: list[dict], url: str) -> str | None:
    """Per arm: closed-book accuracy with its interval (left), perplexity on the documents and on held-out text
    (right); arms of one budget read side by side, where the tokens plot stacks them on one x."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["arm"] for r in rows][::-1]
    ordered = rows[::-1]
    fig, (acc, ppl) = plt.subplots(1, 2, figsize=(10, 0.45 * len(rows) + 1.6), sharey=True)
    for i, r in enumerate(ordered):
        color, marker = SERIES_STYLES.get(r["variant"], ("grey", "x"))
        y = 100 * r["accuracy"]
        acc.errorbar([y], [i], xerr=[[y - 100 * r["ci95"][0]], [100 * r["ci95"][1] - y]], fmt=marker, color=color, capsize=3)
    acc.axvline(25, color="grey", ls=":", lw=1, label="chance (4 options)")
    acc.axvline(100 * rows[0]["accuracy"], color="k", ls="--", lw=0.8, label=f"{rows[0]['arm']}")
    acc.set_yticks(range(len(labels)), labels)
    acc.set_ylim(-1.4, len(labels) - 0.5)  # a free row at the bottom for the legends
    acc.set_xlabel("closed-book accuracy (%), 95% bootstrap CI")
    acc.legend(fontsize=8, loc="lower right", ncol=2)
    docs = [r["perplexity_knowledge"] or 0 for r in ordered]
    held = [r["perplexity_forgetting"] or 0 for r in ordered]
    ys = range(len(ordered))
    ppl.barh([y + 0.2 for y in ys], docs, height=0.4, color="#4C72B0", label="the documents (knowledge)")
    ppl.barh([y - 0.2 for y in ys], held, height=0.4, color="#C44E52", label="held-out text (forgetting)")
    ppl.set_xlabel("perplexity (lower is better)")
    ppl.legend(fontsize=8, loc="lower right", ncol=2)
    fig.suptitle(f"Ablation at equal synthetic tokens and steps ({rows[-1]['steps']} steps)")
    from ray_entigraph.eval.report import png_bytes

    storage.write_bytes(url, png_bytes(fig))
    return url
