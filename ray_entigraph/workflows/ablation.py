"""`ablate`: synthesis variants and filters (the arms of `arms.ARMS`) trained at equal synthetic tokens and
equal optimizer steps, per training seed, and evaluated alike; the report compares every arm with the base
model and with the unfiltered EntiGraph arm of its budget on the same questions (paired bootstrap intervals,
seeds averaged per question).

Every arm is a derived config run through the resumable steps of `steps.py`: an arm with its own synthetic
rows synthesizes into its own output_dir, a curated arm curates a copy of the main rows; the ablation never
changes the synthesis path.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass

from ray_entigraph import schema, storage
from ray_entigraph.arms import ARMS, REFERENCE_ARM
from ray_entigraph.config import EntiGraphConfig, derive
from ray_entigraph.context import RunContext
from ray_entigraph.errors import ConfigError
from ray_entigraph.eval.faithfulness import corpus_faithfulness
from ray_entigraph.eval.launch import BASE_LABEL, run_eval
from ray_entigraph.eval.quality import load_questions, resolve_questions_url
from ray_entigraph.eval.report import bootstrap_ci, cluster_of, paired_delta, positive_control
from ray_entigraph.layout import base_model_name, train_url
from ray_entigraph.lease import leased
from ray_entigraph.ledger import Progress
from ray_entigraph.pipeline import synthesize
from ray_entigraph.runtime import init_ray
from ray_entigraph.train.data import run_pack
from ray_entigraph.train.launch import run_train
from ray_entigraph.workflows.plots import accuracy_vs_tokens_plot, arms_plot
from ray_entigraph.workflows.preflight import preflight
from ray_entigraph.workflows.steps import MIN_STREAM_EPOCHS, log, run_step, synthesis_data


def arm_config(config: EntiGraphConfig, variant: str) -> EntiGraphConfig:
    """The config of one arm: its overrides from `ARMS` on top of the user's config, and its own output_dir
    (<output_dir>/ablation/<own_dir>) when its synthetic rows differ from the main run's."""
    arm = ARMS[variant]
    overrides = arm.overrides(config.ablation)
    if arm.own_dir:
        overrides = [f"output_dir={storage.join(config.output_dir, 'ablation', arm.own_dir(config.ablation))}",
                     *overrides]
    return derive(config, overrides)


def common_budget_blocks(config: EntiGraphConfig, available: dict[str, int]) -> int:
    """The largest budget's blocks: `ablation.budget_tokens` (over-generate, then every arm trains on that many,
    so a filter does not shrink every arm), else the largest every arm can fill."""
    if config.ablation.budget_tokens:
        return max(config.ablation.budget_tokens // config.train.block_len, 1)
    return min(available.values()) if available else 0


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
    control: str = ""  # what the positive control (Raw CPT against base) says about the comparison of arms

    def lines(self) -> list[str]:
        def delta(r, key):
            if r.get(key) is None:
                return "-"
            lo, hi = r[f"{key}_ci95"]
            return f"{100 * r[key]:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"

        def ppl(x):
            return "-" if x is None else f"{x:.2f}"

        out = [f"{'arm':<24} {'tokens':>7} {'steps':>5} {'seeds':>5}  {'accuracy [95% CI]':<20} {'vs base, pts':<20} "
               f"{'vs entigraph, pts':<20} {'verdict':<16} {'vs raw-cpt, pts':<20} {'ppl docs':>8} "
               f"{'ppl held-out':>12} {'grounding':>9} {'copied':>6}"]
        for r in self.rows:
            acc = f"{100 * r['accuracy']:.1f}% [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"
            out.append(f"{r['arm']:<24} {r['synthetic_tokens']:>7} {r['steps']:>5} {len(r['seeds']) or '-':>5}  "
                       f"{acc:<20} {delta(r, 'delta_vs_base'):<20} {delta(r, 'delta_vs_entigraph'):<20} "
                       f"{r.get('verdict_vs_entigraph', '-'):<16} {delta(r, 'delta_vs_raw_cpt'):<20} "
                       f"{ppl(r['perplexity_knowledge']):>8} {ppl(r['perplexity_forgetting']):>12} "
                       f"{ppl(r.get('mean_grounding')):>9} "
                       f"{ppl(r.get('copy_rate')):>6}")
        return out + [self.control, f"report           {self.report_url}"] + [
            f"plot             {u}" for u in (self.plot_url, self.arms_plot_url) if u]


@dataclass(frozen=True)
class AblationRun:
    """One training of the ablation: an arm at a budget with a training seed."""
    name: str
    variant: str
    budget: int
    seed: int
    steps: int
    config: EntiGraphConfig | None = None


def plan_runs(config: EntiGraphConfig, arms: dict[str, EntiGraphConfig], common: int) -> list[AblationRun]:
    """Every (budget, seed, arm) training of the ablation, each in a folder that names its step count."""
    runs: list[AblationRun] = []
    for budget in ablation_budgets(common, config.train.block_len, config.ablation.num_budgets):
        for seed in config.ablation.seeds:
            for variant, arm in arms.items():
                steps = (config.ablation.raw_cpt_steps if variant == "raw-cpt" and config.ablation.raw_cpt_steps
                         else equal_steps(config, budget))
                # the run seed's arms keep plain names (and train.seed unset), so adding seeds reuses them
                name = f"{variant}-{budget}" + ("" if seed == config.seed else f"-seed{seed}")
                # the folder names the step count: other epochs train anew, never resume an arm's old checkpoints
                folder = f"ablation/{name.replace('+', '-plus-')}-{steps}steps"
                runs.append(AblationRun(name, variant, budget, seed, steps, derive(arm, [
                    f"train.name={folder}", f"train.max_steps={steps}",
                    f"train.epochs={max(config.train.epochs, MIN_STREAM_EPOCHS)}",
                    f"train.max_synthetic_tokens={budget if ARMS[variant].synthetic else 'null'}",
                    f"train.seed={'null' if seed == config.seed else seed}",
                ])))
    return runs


@leased("ablate")
def ablate(config: EntiGraphConfig) -> AblationSummary:
    """Synthesis variants and filters trained at equal synthetic tokens and equal steps, evaluated alike."""
    started = time.time()
    if config.synthesis.augmenter != "entigraph":
        raise ConfigError("ablate needs synthesis.augmenter=entigraph. Fix: use an EntiGraph config.")
    ctx, _ = preflight(config, "ablate")  # every input of every arm, before anything is paid for
    main = run_step(config, "synthesize", "synthesize", lambda: synthesize(config, ctx=ctx), data=synthesis_data(ctx))
    arms: dict[str, EntiGraphConfig] = {}
    arm_stamps: dict[str, str] = {}
    for variant in config.ablation.variants:
        arm = arm_config(config, variant)
        arm_stamps[variant] = main["stamp"]
        if arm.output_dir != config.output_dir or arm.curate.enabled:
            # its own synthetic rows, or a curated copy of the main ones (synthesis itself is done and skipped)
            step = "synthesize" if arm.output_dir != config.output_dir else f"ablation/curate-{variant}"
            arm_stamps[variant] = run_step(arm, step, "synthesize", lambda arm=arm: synthesize(arm),
                                           data={**synthesis_data(ctx), "after": main["stamp"]})["stamp"]
        arms[variant] = arm
    init_ray(config)
    faithfulness = arm_faithfulness(config, arms)
    available = {v: run_pack(arm).get(schema.SYNTHETIC_SOURCE, 0) for v, arm in arms.items() if ARMS[v].synthetic}
    common = common_budget_blocks(config, available)
    short = {v: n for v, n in available.items() if n < common}
    log(f"[ablate] synthetic blocks each arm can train on: {available}; budget {common} blocks "
        f"({common * config.train.block_len} tokens), {equal_steps(config, common * config.train.block_len)} steps "
        "per arm" + (f"; short of the budget, trained on all they hold at the same steps: {short}" if short else ""))
    if not common or 0 in available.values():
        raise ConfigError(f"ablate: an arm has no synthetic blocks to train on ({available}). Fix: synthesize more "
                         "(plan.*) or loosen the curate thresholds (ablation.min_grounding).")
    runs = plan_runs(config, arms, common)
    tokens, stamps = {}, []
    progress = Progress("ablate", len(runs), unit="arms trained", stream=sys.stdout, tokens=False,
                        min_interval_s=0, bar=False)  # a line per arm, between the arms' training logs
    for run in runs:
        arm = run.config
        step = f"ablation/train-{run.name}" if arm.output_dir == config.output_dir else f"ablation-train-{run.name}"
        trained = run_step(arm, step, "train", lambda arm=arm: run_train(arm), data={"after": arm_stamps[run.variant]})
        progress.update(1, 0, 0)
        tokens[run.name] = trained["synthetic_tokens_used"]
        stamps.append(trained["stamp"])
    models = [(BASE_LABEL, base_model_name(config))] + [(run.name, train_url(run.config, "model")) for run in runs]
    eval_out = storage.join(config.output_dir, "ablation", "eval")
    # the step is named by its models: other arms or budgets are another evaluation, not "done earlier"
    models_id = hashlib.blake2b(json.dumps(models).encode(), digest_size=4).hexdigest()
    run_step(config, f"ablation/eval-{models_id}", "eval", lambda: run_eval(config, models=models, out_url=eval_out),
             data={"after": stamps})
    report = json.loads(storage.read_text(storage.join(eval_out, "report.json")))
    return ablation_report(config, report, runs, tokens, time.time() - started, faithfulness)


def arm_faithfulness(config: EntiGraphConfig, arms: dict[str, EntiGraphConfig]) -> dict[str, dict]:
    """Per arm with synthetic rows of its own (or the main, uncurated ones): mean grounding, copy rate, looping
    rows and the evaluation questions found in its synthetic text. A curated arm trains on a filtered copy of
    the main rows, whose figures are not these, so it has none."""
    url = resolve_questions_url(config.eval.questions, config.input.path)
    questions = load_questions(url, config.eval.max_questions) if url else []
    out: dict[str, dict] = {}
    measured: dict[str, dict] = {}  # arms on the same synthetic rows share one measurement
    for variant, arm in arms.items():
        if not ARMS[variant].synthetic or arm.curate.enabled:
            continue
        if arm.output_dir not in measured:
            measured[arm.output_dir] = corpus_faithfulness(RunContext.resolve(arm).corpus(), questions)
            stats = measured[arm.output_dir]
            log(f"[ablate] {variant}: {stats['rows']} synthetic rows, mean grounding {_fmt(stats['mean_grounding'])}, "
                f"copy rate {_fmt(stats['copy_rate'])}, looping {_fmt(stats['loop_share'])}, "
                f"{stats['contaminated_questions']} of {len(questions)} questions found in the synthetic text")
        out[variant] = measured[arm.output_dir]
    return out


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


# ---------------------------------------------------------------------------------------- report and statistics

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
        article: dict[str, str] = {}
        for label in labels:
            for q in questions[label]:
                per_q.setdefault(q["qid"], []).append(float(q["correct"]))
                article[q["qid"]] = cluster_of(q)
        out[arm] = [{"qid": qid, "article_id": article[qid], "correct": sum(v) / len(v)} for qid, v in per_q.items()]
    return out


def _faithfulness_fields(stats: dict | None) -> dict:
    keys = ("mean_grounding", "copy_rate", "loop_share", "contaminated_questions")
    return {k: (stats or {}).get(k) for k in keys}


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def ablation_report(config: EntiGraphConfig, report: dict, runs: list[AblationRun], tokens: dict[str, int],
                    wall_s: float, faithfulness: dict[str, dict] | None = None) -> AblationSummary:
    """One row per (arm, budget) with its seeds' models together: accuracy and its interval, the paired change
    against the base model and against the EntiGraph arm of its budget with a verdict, perplexities; the plots
    and <output_dir>/ablation/ablation.json, from the evaluation's report.json and the tokens each run trained
    on."""
    by_label = {r["label"]: r for r in report["summary"]}
    questions = {m["label"]: m["questions"] for m in report["models"]}
    # one row per (variant, budget): its seeds' models together
    groups: dict[str, list[AblationRun]] = {"base": []}
    for run in runs:
        if run.name in questions and by_label[run.name]["accuracy"] is not None:
            groups.setdefault(f"{run.variant}-{run.budget}", []).append(run)
    answers = aggregate_arms(questions, {"base": ["base"],
                                         **{arm: [r.name for r in rs] for arm, rs in groups.items() if rs}})
    # the positive control's arm (its largest budget): the gate reads it, every other trained arm is paired with it
    raw_arm = max((arm for arm, rs in groups.items() if rs and rs[0].variant == "raw-cpt" and arm in answers),
                  key=lambda arm: groups[arm][0].budget, default=None)
    rows = []
    for arm, rs in groups.items():
        labels = [r.name for r in rs] or ["base"]
        if arm not in answers or any(by_label.get(label) is None for label in labels):
            continue
        variant = rs[0].variant if rs else "base"
        correct = [q["correct"] for q in answers[arm]]
        articles = [cluster_of(q) for q in answers[arm]]
        vs_base = paired_delta(answers[arm], answers["base"]) if rs else None
        reference = f"{REFERENCE_ARM}-{rs[0].budget}" if rs else None
        vs_ref = (paired_delta(answers[arm], answers[reference])
                  if rs and variant != REFERENCE_ARM and reference in answers else None)
        vs_raw = paired_delta(answers[arm], answers[raw_arm]) if rs and raw_arm and arm != raw_arm else None

        def ppl(key, labels=labels):
            return _mean([by_label[label][key] for label in labels if by_label[label][key] is not None])

        rows.append({"arm": arm, "variant": variant, "seeds": [r.seed for r in rs],
                     "synthetic_tokens": tokens.get(labels[0], 0), "steps": rs[0].steps if rs else 0,
                     "accuracy": _mean(correct), "ci95": list(bootstrap_ci(correct, articles)),
                     "accuracy_per_seed": [by_label[label]["accuracy"] for label in labels],
                     "delta_vs_base": vs_base[0] if vs_base else None,
                     "delta_vs_base_ci95": list(vs_base[1]) if vs_base else None,
                     "delta_vs_entigraph": vs_ref[0] if vs_ref else None,
                     "delta_vs_entigraph_ci95": list(vs_ref[1]) if vs_ref else None,
                     "verdict_vs_entigraph": verdict(vs_ref[1]) if vs_ref else "-",
                     "delta_vs_raw_cpt": vs_raw[0] if vs_raw else None,
                     "delta_vs_raw_cpt_ci95": list(vs_raw[1]) if vs_raw else None,
                     "perplexity_knowledge": ppl("perplexity_knowledge"),
                     "perplexity_forgetting": ppl("perplexity_forgetting"),
                     **_faithfulness_fields((faithfulness or {}).get(variant))})
    out = storage.join(config.output_dir, "ablation")
    points = [{"arm": r["arm"], "series": r["variant"], "synthetic_tokens": r["synthetic_tokens"],
               "accuracy": r["accuracy"], "ci95": r["ci95"]} for r in rows]
    plot_url = accuracy_vs_tokens_plot(points, None, storage.join(out, "accuracy_vs_tokens.png"),
                                       title="Ablation: accuracy against synthetic tokens (95% cluster bootstrap CI)")
    arms_url = arms_plot(rows, storage.join(out, "arms.png"))
    report_url = storage.join(out, "ablation.json")
    raw = next((r for r in rows if r["arm"] == raw_arm), None)
    control = positive_control(raw and raw["delta_vs_base"], raw and raw["delta_vs_base_ci95"])
    storage.write_text(report_url, json.dumps({"rows": rows, "positive_control": control,
                                               "eval_report": storage.join(out, "eval", "report.md"),
                                               "plots": [plot_url, arms_url], "wall_s": wall_s}, indent=2))
    return AblationSummary(rows=rows, report_url=report_url, plot_url=plot_url, wall_s=wall_s, arms_plot_url=arms_url,
                           control=control)
