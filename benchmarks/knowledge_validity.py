"""Validity of the shipped knowledge benchmark (`builtin:knowledge-dev`, `builtin:knowledge-test`): a model
that never read the documents should answer near chance closed-book, and the same model with the document in
its context should answer most questions (the facts are there and the questions are answerable).

    .venv/bin/python benchmarks/knowledge_validity.py [--model bundled:smollm2-135m-instruct]

Scores every question's four options by log-likelihood, as `eval.protocol=options` does, without and with the
article in context. Prints per split `RESULT split=<s> questions=<n> articles=<n> closed_book=<x> lo=<x> hi=<x>
open_book=<x> open_lo=<x> open_hi=<x> joined_closed=<x> joined_open=<x>` (intervals: 95% cluster bootstrap
over articles; joined: the questions that join two facts). Targets: closed-book within a few points of 0.25,
open-book at least 0.60.
"""

from __future__ import annotations

import argparse
import time


def template_of(question: str) -> str:
    """A question's template: its names (capitalised words after the first) and numbers replaced by X and N."""
    import re

    words = question.split()
    out = [words[0]] + [("X" if w[:1].isupper() else "N" if w[:1].isdigit() else w) for w in words[1:]]
    return re.sub(r"(X )+X", "X", " ".join(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled:smollm2-135m-instruct")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--splits", nargs="+", default=["dev", "test"])
    ap.add_argument("--by-kind", action="store_true", help="also print accuracy per question template")
    args = ap.parse_args()

    from ray_entigraph.engines.hf import load_model
    from ray_entigraph.eval.evaluate import pick
    from ray_entigraph.eval.quality import load_questions
    from ray_entigraph.eval.report import bootstrap_ci
    from ray_entigraph.eval.scoring import score_options

    model, tokenizer, device = load_model(args.model, dtype=args.dtype, device="auto")
    for split in args.splits:
        started = time.time()
        questions = load_questions(f"builtin:knowledge-{split}")
        articles = [q.article_id for q in questions]
        row = {"split": split, "questions": len(questions), "articles": len(set(articles))}
        for name, open_book in (("closed_book", False), ("open_book", True)):
            scores = score_options(model, tokenizer, questions, open_book=open_book, batch_size=4, device=device,
                                   max_len=2048)
            correct = [float(pick(s) == q.gold) for s, q in zip(scores, questions)]
            lo, hi = bootstrap_ci(correct, articles)
            prefix = "" if name == "closed_book" else "open_"
            row[name] = round(sum(correct) / len(correct), 4)
            row[f"{prefix}lo"], row[f"{prefix}hi"] = round(lo, 4), round(hi, 4)
            joined = [c for c, q in zip(correct, questions) if q.difficult]
            row[f"joined_{name.split('_')[0]}"] = round(sum(joined) / max(len(joined), 1), 4)
            if args.by_kind:
                kinds: dict[str, list[float]] = {}
                for c, q in zip(correct, questions):
                    kinds.setdefault(template_of(q.question), []).append(c)
                for kind, cs in sorted(kinds.items()):
                    print(f"  {split} {name} {kind!r}: {sum(cs) / len(cs):.2f} of {len(cs)}")
        row["wall_s"] = round(time.time() - started, 1)
        print("RESULT " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
