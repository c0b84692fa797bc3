"""Packing (train/pack.py): texts joined with BOS/EOS, cut into blocks, tails packed across units, megadocs."""

import numpy as np
import pytest

from ray_entigraph.train.pack import megadocs, pack_tails, pack_token_lists, tokenizer_bos


def test_pack_puts_eos_after_texts_and_keeps_the_tail():
    blocks, tail = pack_token_lists([[1, 2, 3], [4, 5], [6]], block_len=4, eos_id=0)
    assert blocks.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6]] and tail.tolist() == [0]
    blocks, tail = pack_token_lists([], 4, 0)
    assert blocks.shape == (0, 4) and tail.size == 0


def test_bos_starts_every_text_when_given():
    blocks, tail = pack_token_lists([[5, 6], [7]], block_len=3, eos_id=2, bos_id=1)
    assert blocks.tolist() == [[1, 5, 6], [2, 1, 7]] and tail.tolist() == [2]


@pytest.mark.parametrize("seed", range(5))
def test_no_token_is_lost_across_units(seed):
    """Units of random sizes: their blocks plus the tails shard hold every token of every unit, in order,
    and only the completion of the last block repeats tokens (fewer than block_len)."""
    rng = np.random.default_rng(seed)
    block_len = int(rng.integers(4, 40))
    units = [[list(rng.integers(3, 1000, size=int(rng.integers(0, 60)))) for _ in range(int(rng.integers(0, 6)))]
             for _ in range(int(rng.integers(1, 8)))]
    stream, tails, full = [], [], []
    for texts in units:
        for t in texts:
            stream += list(t) + [0]
        blocks, tail = pack_token_lists(texts, block_len, eos_id=0)
        full.append(blocks)
        tails.append(tail)
    tail_blocks, repeated = pack_tails(tails, block_len)
    packed = np.concatenate(full + [tail_blocks]).reshape(-1)
    assert len(packed) == len(stream) + repeated and repeated < block_len
    assert sorted(packed[: len(packed) - repeated].tolist()) == sorted(stream)  # each token exactly once
    assert np.concatenate(tails).tolist() == tail_blocks.reshape(-1)[: len(tail_blocks.reshape(-1)) - repeated].tolist()


def test_a_source_shorter_than_one_block_still_makes_a_block():
    blocks, repeated = pack_tails([np.array([7, 8, 9], dtype=np.int32)], 8)
    assert blocks.tolist() == [[7, 8, 9, 7, 8, 9, 7, 8]] and repeated == 5
    assert pack_tails([np.zeros(0, np.int32)], 8)[0].shape == (0, 8)


def test_megadocs_keep_each_documents_texts_together():
    rows = [{"doc_id": d, "task_id": t, "text": f"{d}:{t}"} for t, d in
            [("t3", "b"), ("t1", "a"), ("t4", "a"), ("t2", "b"), ("t0", "a"), ("t5", "c")]]
    rows.append({"doc_id": "c", "task_id": "t6", "text": ""})
    assert megadocs(rows) == ["a:t0\n\na:t1\n\na:t4", "b:t2\n\nb:t3", "c:t5"]


def test_bos_is_what_the_tokenizer_itself_puts_first(tiny_model_dir):
    """SmolLM2's tokenizer adds no BOS; the same tokenizer with a Llama 3 style post-processor (one BOS before
    every text) is detected, and the EOS-only tokenizer is not."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer_bos(tok) is None
    bos = tok.bos_token
    tok._tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.bos_token_id)])
    assert tok("hello")["input_ids"][0] == tok.bos_token_id
    assert tokenizer_bos(tok) == tok.bos_token_id
