"""Faithfulness of a synthesized corpus: mean grounding against the source documents, copy rate (share of
8-word spans found verbatim in the source), share of looping rows, and how many evaluation questions occur
in any synthetic row (decontamination). Reads the current corpus of a finished `synthesize` run.

    .venv/bin/python benchmarks/synthesis_faithfulness.py --config configs/demo.yaml output_dir=runs/demo [k=v ...]

Prints `RESULT output_dir=<dir> rows=<n> mean_grounding=<x> copy_rate=<x> loop_share=<x>
contaminated_questions=<n> questions=<n>`.
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from ray_entigraph.config import load_config
    from ray_entigraph.context import RunContext
    from ray_entigraph.eval.faithfulness import combine, partition_stats, question_probes
    from ray_entigraph.eval.quality import load_questions, resolve_questions_url

    config = load_config(args.config, args.overrides)
    ctx = RunContext.resolve(config)
    corpus = ctx.corpus()
    url = resolve_questions_url(config.eval.questions, config.input.path)
    questions = load_questions(url) if url else []
    items = question_probes(questions)
    stats = combine([partition_stats(corpus, p, items) for p in range(corpus.num_partitions)])
    fields = {"output_dir": config.output_dir, **{k: (round(v, 4) if isinstance(v, float) else v)
                                                 for k, v in stats.items() if k != "contaminated"},
              "questions": len(questions)}
    print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)


if __name__ == "__main__":
    main()
