"""Packing (train/pack.py): texts joined with EOS and cut into fixed-length blocks."""

from ray_entigraph.train.pack import pack_token_lists


def test_pack_puts_eos_between_texts_and_cuts_blocks():
    blocks, left = pack_token_lists([[1, 2, 3], [4, 5], [6]], block_len=4, eos_id=0)
    assert blocks == [[1, 2, 3, 0], [4, 5, 0, 6]] and left == 1
    assert pack_token_lists([], 4, 0) == ([], 0)
