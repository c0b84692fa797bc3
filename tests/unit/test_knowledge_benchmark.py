"""The knowledge benchmark (demo/knowledge.py): the shipped splits are the seeded generator's output, in the
QuALITY layout, every answer in its document, nothing shared between the splits."""

from __future__ import annotations

import re
from collections import Counter

from ray_entigraph.demo.knowledge import JOINED_PER_DOC, QUESTIONS_PER_DOC, SPLITS, generate, serialise, split_path
from ray_entigraph.eval.quality import load_questions


def test_the_shipped_splits_are_what_the_generator_writes():
    generated = generate()
    for split in SPLITS:
        assert split_path(split).read_text(encoding="utf-8") == serialise(generated[split]), (
            f"{split_path(split)} differs from the generator: run python -m ray_entigraph.demo.knowledge")


def test_each_split_has_200_questions_with_answers_in_the_documents_and_balanced_letters():
    for split in SPLITS:
        questions = load_questions(f"builtin:knowledge-{split}")
        assert len(questions) >= 200 and len({q.article_id for q in questions}) * QUESTIONS_PER_DOC == len(questions)
        assert Counter(q.gold for q in questions) == Counter({i: len(questions) // 4 for i in range(4)})
        joined = [q for q in questions if q.difficult]
        assert len(joined) == len(questions) * JOINED_PER_DOC // QUESTIONS_PER_DOC  # three per document join two facts
        for q in questions:
            assert len(set(q.options)) == 4
            assert q.options[q.gold] in q.article, q.qid  # the answer is in the document...
            # ...and not in the question
            assert not re.search(rf"\b{re.escape(q.options[q.gold])}\b", q.question, re.IGNORECASE)
        # reading matters: many single-fact questions carry a distractor that also occurs in the document; a
        # joined question's distractors come from other documents of the split
        def in_doc(q):
            return any(o in q.article for i, o in enumerate(q.options) if i != q.gold)
        assert sum(in_doc(q) for q in questions if not q.difficult) > len(questions) / 3
        assert not any(in_doc(q) for q in joined if "town" in q.question)


def test_no_invented_name_is_shared_between_the_splits_or_repeated():
    import random

    from ray_entigraph.demo.knowledge import SEED, make_worlds

    worlds = make_worlds(random.Random(SEED), 40)
    names = [n for ws in worlds.values() for w in ws
             for n in (w.org, w.founder, w.successor, w.birthplace, w.town, w.new_town, w.client, w.client_town, w.hall,
                       w.author)]
    assert len(names) == len(set(names))
    for name in ("founder", "successor", "town", "birthplace"):  # each name's parts are unique too
        parts = [p for ws in worlds.values() for w in ws for p in getattr(w, name).split()]
        assert len(parts) == len(set(parts))
    assert generate(seed=1)["dev"][0]["article"] != generate()["dev"][0]["article"]  # the seed matters
