"""Packing texts into fixed-length token blocks (pure functions, no Ray)."""

from __future__ import annotations


def pack_token_lists(token_lists: list[list[int]], block_len: int, eos_id: int) -> tuple[list[list[int]], int]:
    """Concatenate texts with an EOS after each and cut into blocks of `block_len` tokens.

    Returns (blocks, number of tokens left over at the end, which do not fill a block). Deterministic: the
    same texts in the same order give the same blocks.
    """
    blocks: list[list[int]] = []
    current: list[int] = []
    for tokens in token_lists:
        current.extend(tokens)
        current.append(eos_id)
        while len(current) >= block_len:
            blocks.append(current[:block_len])
            current = current[block_len:]
    return blocks, len(current)
