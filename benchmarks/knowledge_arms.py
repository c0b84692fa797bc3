"""The knowledge benchmark end to end: `ablate` on one split of the shipped benchmark (synthesize each arm,
train every arm at equal steps, Raw CPT at its own, evaluate all with cluster intervals), then one line per
arm. Choose arms and settings on `dev`; run `test` once with the choice.

    .venv/bin/python benchmarks/knowledge_arms.py --split dev [key=value ...]
    .venv/bin/python benchmarks/knowledge_arms.py --split test ablation.variants=[entigraph,entigraph+raw,raw-cpt]

Prints `RESULT split=<s> arm=<name> accuracy=<x> lo=<x> hi=<x> delta_vs_base=<x> delta_lo=<x> delta_hi=<x>
delta_vs_raw_cpt=<x> delta_vs_raw_cpt_lo=<x> delta_vs_raw_cpt_hi=<x> copy_rate=<x> grounding=<x> steps=<n>
synthetic_tokens=<n>` per arm (the base model's line has no delta; delta_vs_raw_cpt pairs it with the positive
control on the same questions),
`RESULT split=<s> contaminated_questions=<n> of=<n>` (evaluation questions found in any arm's synthetic
text), and the positive control's verdict.
"""

from __future__ import annotations

import argparse


def _x(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=["dev", "test"], required=True)
    ap.add_argument("--config", default="configs/knowledge.yaml")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from ray_entigraph.config import load_config
    from ray_entigraph.eval.quality import load_questions
    from ray_entigraph.workflows import ablate

    config = load_config(args.config, [f"input.path=builtin:knowledge-{args.split}",
                                       f"output_dir=runs/knowledge-{args.split}", *args.overrides])
    summary = ablate(config)
    for line in summary.lines():
        print(line, flush=True)
    contaminated = 0
    for r in summary.rows:
        delta = r.get("delta_vs_base")
        lo, hi = r.get("delta_vs_base_ci95") or (None, None)
        rlo, rhi = r.get("delta_vs_raw_cpt_ci95") or (None, None)
        print(f"RESULT split={args.split} arm={r['arm']} accuracy={_x(r['accuracy'])} lo={_x(r['ci95'][0])} "
              f"hi={_x(r['ci95'][1])} delta_vs_base={_x(delta)} delta_lo={_x(lo)} delta_hi={_x(hi)} "
              f"delta_vs_raw_cpt={_x(r.get('delta_vs_raw_cpt'))} delta_vs_raw_cpt_lo={_x(rlo)} "
              f"delta_vs_raw_cpt_hi={_x(rhi)} copy_rate={_x(r.get('copy_rate'))} "
              f"grounding={_x(r.get('mean_grounding'))} steps={r['steps']} "
              f"synthetic_tokens={r['synthetic_tokens']}", flush=True)
        contaminated = max(contaminated, r.get("contaminated_questions") or 0)
    total = len(load_questions(config.input.path))
    print(f"RESULT split={args.split} contaminated_questions={contaminated} of={total}", flush=True)
    print(f"RESULT split={args.split} control=\"{summary.control}\"", flush=True)


if __name__ == "__main__":
    main()
