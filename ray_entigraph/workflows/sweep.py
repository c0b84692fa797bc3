"""`sweep`: the paper's scaling experiment at the user's scale. EntiGraph trained at several synthetic token
budgets, plus the baselines (Raw CPT, the rephrase augmenter), all evaluated alike; the report fits the
paper's mixture-of-exponentials curve to accuracy against synthetic tokens and plots it.

Every arm is a derived config run through the resumable steps of `steps.py`: the sweep never changes the
synthesis path.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

from ray_entigraph import schema, storage
from ray_entigraph.config import EntiGraphConfig, derive, without_streams
from ray_entigraph.errors import ConfigError
from ray_entigraph.eval.curve import fit, terms_for
from ray_entigraph.eval.launch import BASE_LABEL, run_eval
from ray_entigraph.eval.report import positive_control
from ray_entigraph.layout import base_model_name, train_url
from ray_entigraph.lease import leased
from ray_entigraph.ledger import Progress
from ray_entigraph.pipeline import synthesize
from ray_entigraph.runtime import init_ray
from ray_entigraph.train.data import run_pack
from ray_entigraph.train.launch import run_train
from ray_entigraph.workflows.plots import accuracy_vs_tokens_plot
from ray_entigraph.workflows.preflight import preflight
from ray_entigraph.workflows.steps import MIN_STREAM_EPOCHS, raw_cpt_config, run_step, synthesis_data


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
            out.append(f"fit              y(x) = {self.fit['a']:.2f}{terms}  "
                       f"(x in tokens, rmse {self.fit['rmse']:.2f})")
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


def raw_cpt_steps(config: EntiGraphConfig, largest_budget: int) -> int:
    """Raw CPT's own step budget: `sweep.raw_cpt_steps`, else the steps of the largest EntiGraph budget (train.epochs
    over it), so the baseline is never cut short by the documents being a short stream."""
    if config.sweep.raw_cpt_steps:
        return config.sweep.raw_cpt_steps
    blocks = max(largest_budget // config.train.block_len, 1)
    return max(config.train.epochs * blocks // config.train.global_batch_size, 1)


def sweep_arms(config: EntiGraphConfig, available_blocks: int) -> list[tuple[str, EntiGraphConfig]]:
    """The arms trained on the main output_dir: EntiGraph at each token budget, or with sweep.mixtures one
    arm per mixture of train.streams (`mix-<i>`, each trained for train.max_steps: equal tokens); then Raw CPT."""
    arms: list[tuple[str, EntiGraphConfig]] = []
    if config.sweep.mixtures:
        if config.train.max_steps is None:
            raise ConfigError("sweep.mixtures compares mixtures at equal tokens, which needs train.max_steps (each "
                              "mixture's epoch has its own length). Fix: set train.max_steps.")
        base = without_streams(config)
        for i, shares in enumerate(config.sweep.mixtures):
            # every mixture trains train.max_steps, not fewer when its epoch is short
            arm = derive(base, [f"train.name=sweep/mix-{i}", f"train.streams={json.dumps(shares)}",
                                f"train.epochs={max(config.train.epochs, MIN_STREAM_EPOCHS)}"])
            arms.append((f"mix-{i}", arm))
    else:
        for budget in sweep_budgets(config, available_blocks):
            # epochs over each budget set its steps (a preset's train.max_steps would give every budget the same)
            arms.append((f"entigraph-{budget}", derive(config, [f"train.name=sweep/entigraph-{budget}",
                                                                f"train.max_synthetic_tokens={budget}",
                                                                "train.max_steps=null"])))
    if "raw" in config.sweep.baselines:
        steps = (config.train.max_steps if config.sweep.mixtures and not config.sweep.raw_cpt_steps
                 else raw_cpt_steps(config, max(sweep_budgets(config, available_blocks))))
        arms.append(("raw-cpt", raw_cpt_config(config, f"sweep/raw-cpt-{steps}steps", steps)))
    return arms


@leased("sweep")
def sweep(config: EntiGraphConfig) -> SweepSummary:
    """EntiGraph at several synthetic token budgets, plus the baselines, trained and evaluated alike."""
    started = time.time()
    if config.sweep.mixtures and config.train.max_steps is None:  # before anything runs
        sweep_arms(config, 1)
    if config.synthesis.augmenter != "entigraph" and not config.sweep.mixtures:
        raise ConfigError("sweep needs synthesis.augmenter=entigraph (the rephrase baseline is one of its arms), "
                          "or sweep.mixtures (token shares of train.streams to compare). Fix: use an EntiGraph "
                          "config, or list the mixtures.")
    ctx, _ = preflight(config, "sweep")  # every input of every arm, before anything is paid for
    synth = run_step(config, "synthesize", "synthesize", lambda: synthesize(config, ctx=ctx),
                     data=synthesis_data(ctx))
    init_ray(config)
    available = run_pack(config).get(schema.SYNTHETIC_SOURCE, 0)
    arms = sweep_arms(config, available)
    if "rephrase" in config.sweep.baselines and not config.sweep.mixtures:
        rephrase = derive(config, [f"output_dir={storage.join(config.output_dir, 'sweep', 'rephrase')}",
                                   "synthesis.augmenter=rephrase", "synthesis.prompts=rephrase-v1",
                                   "train.max_synthetic_tokens=null", "train.max_steps=null"])
        rephrased = run_step(rephrase, "synthesize", "synthesize", lambda: synthesize(rephrase),
                             data=synthesis_data(ctx))
        arms.append(("rephrase", rephrase))
    tokens, stamps = {}, []
    progress = Progress("sweep", len(arms), unit="arms trained", stream=sys.stdout, tokens=False,
                        min_interval_s=0, bar=False)  # a line per arm, between the arms' training logs
    for name, arm in arms:
        # arms on the main output_dir keep their markers apart by name; the rephrase arm has its own output_dir
        step = f"sweep/train-{name}" if arm.output_dir == config.output_dir else "train"
        after = rephrased["stamp"] if name == "rephrase" else synth["stamp"]
        trained = run_step(arm, step, "train", lambda arm=arm: run_train(arm), data={"after": after})
        progress.update(1, 0, 0)
        tokens[name] = trained["synthetic_tokens_used"]
        stamps.append(trained["stamp"])
    models = [(BASE_LABEL, base_model_name(config))]
    models += [(name, train_url(arm, "model")) for name, arm in arms]
    eval_out = storage.join(config.output_dir, "sweep", "eval")
    # every arm's training is part of the evaluation's identity: a new budget or baseline is evaluated
    run_step(config, "sweep/eval", "eval", lambda: run_eval(config, models=models, out_url=eval_out),
             data={"after": stamps})
    report = json.loads(storage.read_text(storage.join(eval_out, "report.json")))
    return sweep_report(config, report, tokens, time.time() - started)


def sweep_report(config: EntiGraphConfig, report: dict, tokens: dict[str, int], wall_s: float) -> SweepSummary:
    """The sweep's points (accuracy per arm at its synthetic tokens), the curve fitted to the entigraph budgets
    and the base model, the plot and <output_dir>/sweep/sweep.json, from the evaluation's report.json and the
    tokens each arm trained on."""
    rows = {r["label"]: r for r in report["summary"]}
    points = []
    for label, row in rows.items():
        if row["accuracy"] is None:
            continue
        arm = "entigraph" if label.startswith("entigraph-") else label
        points.append({"arm": label, "series": arm, "synthetic_tokens": 0 if label == "base" else tokens.get(label, 0),
                       "accuracy": row["accuracy"], "ci95": row["accuracy_ci95"],
                       **({"streams": config.sweep.mixtures[int(label[4:])]}
                          if label.startswith("mix-") and config.sweep.mixtures else {})})
    curve_pts = sorted((p["synthetic_tokens"], p["accuracy"]) for p in points if p["series"] in ("entigraph", "base"))
    n_terms = terms_for(len(curve_pts))
    fitted = None
    if n_terms:
        f = fit([x for x, _ in curve_pts], [100 * y for _, y in curve_pts], n_terms)
        fitted = {"a": f.a, "terms": [list(t) for t in f.terms], "rmse": f.rmse, "num_points": len(curve_pts),
                  # the paper's shape: a gain (every b_i > 0) toward an asymptote that is an accuracy
                  "rises": all(b > 0 for b, _ in f.terms) and 0.0 <= f.a <= 100.0}
    out = storage.join(config.output_dir, "sweep")
    plot_url = accuracy_vs_tokens_plot(points, fitted, storage.join(out, "accuracy_vs_tokens.png"))
    report_url = storage.join(out, "sweep.json")
    raw = rows.get("raw-cpt") or {}
    control = positive_control(raw.get("delta_vs_base"), raw.get("delta_vs_base_ci95"))
    storage.write_text(report_url, json.dumps({"points": points, "fit": fitted, "positive_control": control,
                                               "eval_report": storage.join(out, "eval", "report.md"),
                                               "wall_s": wall_s}, indent=2))
    return SweepSummary(points=points, fit=fitted, report_url=report_url, plot_url=plot_url, wall_s=wall_s,
                        lines_extra=[control, f"eval report      {storage.join(out, 'eval', 'report.md')}"])
