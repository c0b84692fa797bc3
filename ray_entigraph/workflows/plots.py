"""The experiments' figures: accuracy against synthetic tokens (`sweep` and `ablate`) and the per-arm plot
(`ablate`), written as PNG through storage. matplotlib is imported inside the functions.

Each series is drawn in one style everywhere: an ablation arm's comes from its entry in `arms.ARMS`; the
base model and the sweep's rephrase baseline, which are not ablation arms, are styled here.
"""

from __future__ import annotations

from ray_entigraph import storage
from ray_entigraph.arms import ARMS
from ray_entigraph.eval.curve import CurveFit
from ray_entigraph.eval.report import png_bytes

# (matplotlib colour, marker) of every series: the ablation arms (entigraph and raw-cpt are the sweep's too),
# the untrained base model, and the sweep's rephrase baseline
SERIES_STYLES: dict[str, tuple[str, str]] = {
    "base": ("k", "s"),
    "rephrase": ("#55A868", "D"),
    **{name: (arm.color, arm.marker) for name, arm in ARMS.items()},
}
_UNKNOWN_STYLE = ("grey", "x")  # a series no one declared

# perplexity bars of the per-arm plot
_KNOWLEDGE_COLOR = "#4C72B0"
_FORGETTING_COLOR = "#C44E52"

# The questions are four-option multiple choice (QuALITY): guessing scores 1 in 4.
_NUM_OPTIONS = 4


def style(series: str) -> tuple[str, str]:
    """(colour, marker) of a series."""
    return SERIES_STYLES.get(series, _UNKNOWN_STYLE)


def accuracy_vs_tokens_plot(points: list[dict], fitted: dict | None, url: str,
                            title: str = "Accuracy against synthetic tokens (95% cluster bootstrap CI)") -> str | None:
    """Accuracy with its interval per point, one series per arm, and the fitted entigraph curve when given;
    written to `url` (None when there are no points)."""
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for series in dict.fromkeys(p["series"] for p in points):
        pts = sorted((p for p in points if p["series"] == series), key=lambda p: p["synthetic_tokens"])
        color, marker = style(series)
        xs = [p["synthetic_tokens"] for p in pts]
        ys = [100 * p["accuracy"] for p in pts]
        err = [[y - 100 * p["ci95"][0] for y, p in zip(ys, pts)], [100 * p["ci95"][1] - y for y, p in zip(ys, pts)]]
        ax.errorbar(xs, ys, yerr=err, fmt=marker, color=color, capsize=3, label=series)
    if fitted:
        curve = CurveFit(fitted["a"], tuple(tuple(t) for t in fitted["terms"]), fitted["rmse"])
        xmax = max(p["synthetic_tokens"] for p in points if p["series"] in ("entigraph", "base")) or 1
        xs = np.linspace(0, xmax * 1.05, 200)
        note = "" if fitted["rises"] else ", no gain"
        ax.plot(xs, curve(xs), color=style("entigraph")[0], alpha=0.6,
                label=f"mixture-of-exponentials fit ({len(fitted['terms'])} term{note})")
    ax.set_xlabel("synthetic tokens trained on (per epoch)")
    ax.set_ylabel("closed-book accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    storage.write_bytes(url, png_bytes(fig))
    return url


def arms_title(rows: list[dict]) -> str:
    """The arms plot's title: the synthetic arms' common steps, and Raw CPT's own when it differs."""
    steps = sorted({r["steps"] for r in rows if r["steps"] and r.get("variant") != "raw-cpt"})
    raw = sorted({r["steps"] for r in rows if r.get("variant") == "raw-cpt"})
    title = f"Ablation at equal synthetic tokens and steps ({'/'.join(map(str, steps)) or '-'} steps"
    return title + (f"; Raw CPT {'/'.join(map(str, raw))} steps)" if raw and raw != steps else ")")


def arms_plot(rows: list[dict], url: str) -> str | None:
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
        color, marker = style(r["variant"])
        y = 100 * r["accuracy"]
        acc.errorbar([y], [i], xerr=[[y - 100 * r["ci95"][0]], [100 * r["ci95"][1] - y]], fmt=marker, color=color,
                     capsize=3)
    acc.axvline(100 / _NUM_OPTIONS, color="grey", ls=":", lw=1, label=f"chance ({_NUM_OPTIONS} options)")
    acc.axvline(100 * rows[0]["accuracy"], color="k", ls="--", lw=0.8, label=f"{rows[0]['arm']}")
    acc.set_yticks(range(len(labels)), labels)
    acc.set_ylim(-1.4, len(labels) - 0.5)  # a free row at the bottom for the legends
    acc.set_xlabel("closed-book accuracy (%), 95% cluster bootstrap CI")
    acc.legend(fontsize=8, loc="lower right", ncol=2)
    docs = [r["perplexity_knowledge"] or 0 for r in ordered]
    held = [r["perplexity_forgetting"] or 0 for r in ordered]
    ys = range(len(ordered))
    ppl.barh([y + 0.2 for y in ys], docs, height=0.4, color=_KNOWLEDGE_COLOR, label="the documents (knowledge)")
    ppl.barh([y - 0.2 for y in ys], held, height=0.4, color=_FORGETTING_COLOR, label="held-out text (forgetting)")
    ppl.set_xlabel("perplexity (lower is better)")
    ppl.legend(fontsize=8, loc="lower right", ncol=2)
    fig.suptitle(arms_title(rows))
    storage.write_bytes(url, png_bytes(fig))
    return url
