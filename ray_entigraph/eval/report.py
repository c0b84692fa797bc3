"""Reports from per-model results: accuracy with bootstrap intervals, the change against the base model,
perplexities, a per-question breakdown, JSON + Markdown + PNG plots. Pure except for writing the files."""

from __future__ import annotations

import io

CHANCE_NOTE = "chance is 1 / number of options (25% for four options)"
UNINFORMATIVE = "the comparison between arms is uninformative"
RAW_CPT_LABEL = "raw-cpt"  # the positive control's label in `run`'s and `sweep`'s reports


def verdict_lines(rows: list[dict]) -> list[str]:
    """Plain sentences on what beat the base model: the positive control first (a `raw-cpt` row), then
    whether every other model beat the base model outside its paired 95% interval."""
    out = []
    control = next((r for r in rows if r["label"] == RAW_CPT_LABEL), None)
    if control is not None:
        out.append(positive_control(control.get("delta_vs_base"), control.get("delta_vs_base_ci95")))
    for r in rows:
        if r["label"] == RAW_CPT_LABEL or r.get("delta_vs_base") is None:
            continue
        lo, hi = r["delta_vs_base_ci95"]
        beat = "beat" if lo > 0 else "did not beat"
        out.append(f"{r['label']} {beat} the base model outside its 95% interval "
                   f"({100 * r['delta_vs_base']:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}])")
    return out


def positive_control(delta: float | None, ci95) -> str:
    """What the positive control (Raw CPT: training on the documents themselves) says about a comparison of
    arms: it is informative only when Raw CPT beat the base model outside its interval."""
    if delta is None or not ci95:
        return f"positive control: no Raw CPT arm was evaluated against the base model, so {UNINFORMATIVE}"
    shown = f"{100 * delta:+.1f} pts [{100 * ci95[0]:+.1f}, {100 * ci95[1]:+.1f}]"
    if ci95[0] > 0:
        return f"positive control passed: Raw CPT beat the base model by {shown}"
    return (f"positive control failed: Raw CPT did not beat the base model outside its 95% interval ({shown}), "
            f"so {UNINFORMATIVE}")


def bootstrap_ci(values: list[float], clusters: list[str] | None = None, *, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`, resampling whole clusters (questions about one
    article succeed or fail together, so resampling questions alone gives intervals that are too narrow).
    `clusters` names each value's cluster (its article id); None resamples the values one by one. Computed
    by `scipy.stats.bootstrap` on (per-cluster sum, per-cluster count) pairs with the ratio of totals as the
    statistic, which is the mean over the resampled clusters' values."""
    if not values:
        return (float("nan"), float("nan"))
    import numpy as np
    from scipy.stats import bootstrap

    keys = clusters if clusters is not None else [str(i) for i in range(len(values))]
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for key, v in zip(keys, values):
        sums[key] = sums.get(key, 0.0) + float(v)
        counts[key] = counts.get(key, 0) + 1
    s = np.array([sums[k] for k in sums])
    n = np.array([counts[k] for k in sums], dtype=float)
    mean = float(s.sum() / n.sum())
    if len(s) < 2 or np.all(s / n == s[0] / n[0]):  # nothing to resample
        return (mean, mean)
    res = bootstrap((s, n), lambda a, b, axis=-1: a.sum(axis=axis) / b.sum(axis=axis), paired=True,
                    vectorized=True, n_resamples=n_boot, confidence_level=level, method="percentile",
                    rng=np.random.default_rng(seed))
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def cluster_of(q: dict) -> str:
    """A per-question result's cluster: its article (results written before articles were recorded: itself)."""
    return q.get("article_id") or q["qid"]


def paired_delta(questions: list[dict], reference: list[dict]) -> tuple[float, tuple[float, float]] | None:
    """Mean change in correctness against a reference model on the same questions (matched by qid), and its
    cluster bootstrap interval (whole articles resampled, each question keeping its pair); None when no
    question is shared."""
    ref = {q["qid"]: float(q["correct"]) for q in reference}
    shared = [q for q in questions if q["qid"] in ref]
    if not shared:
        return None
    diffs = [float(q["correct"]) - ref[q["qid"]] for q in shared]
    return sum(diffs) / len(diffs), bootstrap_ci(diffs, [cluster_of(q) for q in shared])


def summarize(results: list[dict], base_label: str | None) -> list[dict]:
    """One row per model: accuracy and its interval, the paired change against the base model and its
    interval (same questions resampled), perplexities."""
    base = next((r for r in results if r["label"] == base_label), None)
    rows = []
    for r in results:
        correct = [float(q["correct"]) for q in r["questions"]]
        clusters = [cluster_of(q) for q in r["questions"]]
        row = {
            "label": r["label"], "model": r["model"], "protocol": r["protocol"], "n": len(correct),
            "accuracy": r.get("accuracy"), "accuracy_ci95": bootstrap_ci(correct, clusters) if correct else None,
            "open_book_accuracy": r.get("open_book_accuracy"),
            "unparsed": sum(q["pick"] == -1 for q in r["questions"]),
            "perplexity_knowledge": (r.get("perplexity_knowledge") or {}).get("perplexity"),
            "perplexity_forgetting": (r.get("perplexity_forgetting") or {}).get("perplexity"),
            "wall_s": r.get("wall_s"),
        }
        delta = paired_delta(r["questions"], base["questions"]) if base and r is not base else None
        if delta:
            row["delta_vs_base"], row["delta_vs_base_ci95"] = delta
        rows.append(row)
    return rows


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(ci) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _num(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown(rows: list[dict], results: list[dict], questions: list, meta: dict, plots: dict[str, str]) -> str:
    lines = [f"# Evaluation report: {meta.get('output_dir', '')}", ""]
    lines += [f"- questions: {meta.get('questions_url') or 'none'} ({len(questions)} questions); protocol "
              f"`{meta.get('protocol')}`; {CHANCE_NOTE}",
              f"- knowledge perplexity: on {meta.get('knowledge_texts', 0)} source documents; "
              f"forgetting perplexity: on {meta.get('forgetting_texts', 0)} held-out texts "
              f"({meta.get('forgetting_source')})",
              "- intervals are 95% percentile cluster bootstrap intervals: whole articles are resampled, since "
              "questions about one article succeed or fail together; the change against the base model is paired "
              "(each question keeps its pair)", ""]
    lines += ["| model | closed-book accuracy [95% CI] | change vs base [95% CI] | open-book (reference) | "
              "knowledge ppl | forgetting ppl | eval time |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        delta = ("-" if "delta_vs_base" not in r else
                 f"{100 * r['delta_vs_base']:+.1f} pts{_ci(r['delta_vs_base_ci95'])}")
        lines.append(f"| {r['label']} | {_pct(r['accuracy'])}{_ci(r['accuracy_ci95'])} | {delta} | "
                     f"{_pct(r['open_book_accuracy'])} | {_num(r['perplexity_knowledge'])} | "
                     f"{_num(r['perplexity_forgetting'])} | {r['wall_s']}s |")
    lines.append("")
    lines += [f"- {v}" for v in verdict_lines(rows)] + [""]
    for name, url in plots.items():
        lines += [f"![{name}]({url.rsplit('/', 1)[-1]})", ""]
    if questions:
        labels = [r["label"] for r in results]
        by_model = {r["label"]: {q["qid"]: q for q in r["questions"]} for r in results}
        lines += ["## Per question", "", "| question | gold | " + " | ".join(labels) + " |",
                  "|---|---|" + "---|" * len(labels)]
        for q in questions:
            cells = []
            for label in labels:
                a = by_model[label].get(q.qid)
                if a is None:
                    cells.append("")
                else:
                    choice = "unparsed" if a["pick"] == -1 else "ABCDEFGHIJ"[a["pick"]]
                    cells.append(("✓ " if a["correct"] else "✗ ") + choice)
            text = q.question if len(q.question) <= 70 else q.question[:67] + "..."
            lines.append(f"| `{q.qid}` {text} | {'ABCDEFGHIJ'[q.gold]}. {q.options[q.gold]} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def png_bytes(fig) -> bytes:
    """A finished matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt  # lazy: matplotlib loads only to draw a plot

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def accuracy_plot(rows: list[dict], num_options: int = 4) -> bytes | None:
    rows = [r for r in rows if r["accuracy"] is not None]
    if not rows:
        return None
    import matplotlib  # lazy: matplotlib loads only to draw a plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(rows) + 2), 4))
    xs = range(len(rows))
    acc = [100 * r["accuracy"] for r in rows]
    err = [[100 * (r["accuracy"] - r["accuracy_ci95"][0]) for r in rows],
           [100 * (r["accuracy_ci95"][1] - r["accuracy"]) for r in rows]]
    ax.bar(xs, acc, yerr=err, capsize=4, color="#4C72B0")
    ax.axhline(100 / num_options, color="grey", ls=":", label="chance")
    ob = next((r["open_book_accuracy"] for r in rows if r.get("open_book_accuracy") is not None), None)
    if ob is not None:
        ax.axhline(100 * ob, color="#DD8452", ls="--", label="base, document in context")
    ax.set_xticks(list(xs), [r["label"] for r in rows], rotation=20, ha="right")
    ax.set_ylabel("closed-book accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("What the model learned (95% cluster bootstrap CI)")
    ax.legend(loc="upper left", fontsize=8)
    return png_bytes(fig)


def perplexity_plot(rows: list[dict]) -> bytes | None:
    if not any(r["perplexity_knowledge"] or r["perplexity_forgetting"] for r in rows):
        return None
    import matplotlib  # lazy: matplotlib loads only to draw a plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(rows) + 4), 4))
    for ax, key, title in ((axes[0], "perplexity_knowledge", "source documents (lower: learned)"),
                           (axes[1], "perplexity_forgetting", "held-out general text (higher: forgot)")):
        vals = [r[key] or 0.0 for r in rows]
        ax.bar(range(len(rows)), vals, color="#55A868" if "knowledge" in key else "#C44E52")
        ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=20, ha="right")
        ax.set_title(title)
        ax.set_ylabel("perplexity")
    return png_bytes(fig)
