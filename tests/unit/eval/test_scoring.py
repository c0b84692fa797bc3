"""Option scoring's arithmetic (eval/scoring.py): continuation log-probabilities from logits. Scoring a
real model runs in tests/integration/test_eval_run.py."""

from __future__ import annotations

import pytest

from ray_entigraph.eval.evaluate import pick


def test_continuation_logprobs_picks_the_overwhelmingly_likely_option():
    torch = pytest.importorskip("torch")
    from ray_entigraph.eval.scoring import continuation_logprobs

    vocab = 10
    ids = torch.tensor([[1, 2, 5, 6], [1, 2, 7, 8]])
    logits = torch.zeros(2, 4, vocab)
    logits[0, 1, 5] = logits[0, 2, 6] = 20.0  # row 0's continuation [5, 6] is made overwhelmingly likely
    sums, counts = continuation_logprobs(logits, ids, [(2, 4), (2, 4)])
    assert counts == [2, 2]
    assert sums[0] > -1e-6 and sums[1] < -4.0  # log(1/10) per token for the other row
    assert pick([s / c for s, c in zip(sums, counts)]) == 0
    # invariant to the order of the options: swap the rows, the same option wins
    sums2, _ = continuation_logprobs(logits.flip(0), ids.flip(0), [(2, 4), (2, 4)])
    assert sums2 == sums[::-1] and pick(sums2) == 1
