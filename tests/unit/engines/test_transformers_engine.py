"""The transformers engine's pure parts (engines/transformers_engine.py): shared-prefix detection, padding
around the prefix, and request grouping."""

from __future__ import annotations

import random

from ray_entigraph.engines import GenerationRequest, SamplingParams
from ray_entigraph.engines.transformers_engine import group_requests, pad_batch, shared_prefix_length


def test_shared_prefix_length_leaves_every_sequence_a_token_of_its_own():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4, 6]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # [1,2,3] must keep its last token
    assert shared_prefix_length([[1, 2], [3, 4]]) == 0
    assert shared_prefix_length([[7]]) == 0
    assert shared_prefix_length([]) == 0


def test_shared_prefix_length_matches_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        common = [rng.randrange(5) for _ in range(rng.randrange(6))]
        seqs = [common + [rng.randrange(5) for _ in range(rng.randrange(1, 5))] for _ in range(rng.randrange(1, 5))]
        n = shared_prefix_length(seqs)
        assert all(s[:n] == seqs[0][:n] for s in seqs)
        assert all(len(s) > n for s in seqs)
        # maximal: one more token is either not shared or would leave a sequence empty
        assert any(len(s) <= n + 1 or s[n] != seqs[0][n] for s in seqs)


def test_pad_batch_puts_padding_between_prefix_and_own_tokens():
    ids, mask = pad_batch([[1, 2, 3, 9], [1, 2, 3, 8, 8, 8]], prefix_len=3, pad_id=0)
    assert ids == [[1, 2, 3, 0, 0, 9], [1, 2, 3, 8, 8, 8]]
    assert mask == [[1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1]]
    # positions follow the mask: the own tokens of both rows continue right after the prefix
    positions = [[sum(m[: i + 1]) - 1 for i in range(len(m))] for m in mask]
    assert positions[0][-1] == 3 and positions[1][3] == 3


def test_pad_batch_without_prefix_is_left_padding():
    ids, mask = pad_batch([[5], [6, 7, 8]], prefix_len=0, pad_id=0)
    assert ids == [[0, 0, 5], [6, 7, 8]] and mask == [[0, 0, 1], [1, 1, 1]]


def _req(key, doc, temperature=0.7):
    return GenerationRequest(key=key, messages=[{"role": "user", "content": key}],
                             sampling=SamplingParams(temperature=temperature, top_p=0.9, max_new_tokens=16,
                                                     repetition_penalty=1.0), prefix_key=doc)


def test_group_requests_by_sampling_then_document_in_caller_order():
    reqs = [_req("a1", "A"), _req("b1", "B"), _req("a2", "A"), _req("g", "A", temperature=0.0), _req("b2", "B")]
    groups = [[reqs[i].key for i in g] for g in group_requests(reqs)]
    assert groups == [["a1", "a2"], ["b1", "b2"], ["g"]]


def test_penalties_count_generated_tokens_only_never_the_prompt():
    import torch

    from ray_entigraph.engines.hf import output_penalties

    prompt = [5, 6, 7]  # the document's tokens: copying them must cost nothing
    ids = torch.tensor([prompt + [8, 8, 9]])
    scores = torch.ones((1, 12))
    freq = output_penalties(len(prompt), 1.0, frequency=0.5, presence=0.25)(ids, scores.clone())
    assert freq[0, 5:8].tolist() == [1.0, 1.0, 1.0]
    assert freq[0, 8].item() == 1.0 - 0.5 * 2 - 0.25 and freq[0, 9].item() == 1.0 - 0.5 - 0.25
    rep = output_penalties(len(prompt), 2.0, 0.0, 0.0)(ids, scores.clone())
    assert rep[0, 5:8].tolist() == [1.0, 1.0, 1.0] and rep[0, 8].item() == 0.5 and rep[0, 9].item() == 0.5
    assert len(output_penalties(len(prompt), 1.0, 0.0, 0.0)) == 0  # no penalty: no processor at all


def test_a_tokenizer_without_a_chat_template_gets_plain_few_shot_text():
    from ray_entigraph.engines.hf import render_prompt

    class BaseTokenizer:  # a base model's tokenizer: no chat template
        chat_template = None
        bos_token = "<s>"

    messages = [{"role": "system", "content": "Answer the question."},
                {"role": "user", "content": "Question: 1+1?\nA. 2\nB. 3"},
                {"role": "assistant", "content": "Answer: A"},
                {"role": "user", "content": "Question: 2+2?\nA. 5\nB. 4"}]
    assert render_prompt(BaseTokenizer(), messages) == (
        "<s>Answer the question.\n\nQuestion: 1+1?\nA. 2\nB. 3\n\nAnswer: A\n\nQuestion: 2+2?\nA. 5\nB. 4\n")
