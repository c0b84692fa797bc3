"""Training streams (train.streams, train/mix.py): the human-written documents and each synthetic format as
streams of the mixture by token share, exact to one block per stream per epoch over 10^6 blocks, whichever
way the texts were packed."""

from __future__ import annotations

import numpy as np
import pytest

from ray_entigraph.config import TrainConfig
from ray_entigraph.train.mix import MixSpec, epoch_stream, realised_shares
from ray_entigraph.train.pack import megadocs, pack_tails, pack_token_lists

BLOCK = 8
FORMATS = ("faq", "table", "tutorial")


def _corpus(num_docs: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Documents with long-tailed lengths and each format's rewrites of them (texts of `x`s: one token each)."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.lognormal(4.5, 0.9, num_docs).astype(int) + 5, 4_000)
    docs = [{"doc_id": f"d{i:06d}", "text": "x" * int(n)} for i, n in enumerate(lengths)]
    rows = [{"doc_id": d["doc_id"], "task_id": f"{d['doc_id']}-{fmt}", "kind": f"rewrite:{fmt}",
             "text": "x" * max(1, int(len(d["text"]) * ratio))}
            for d in docs for fmt, ratio in zip(FORMATS, (0.6, 0.3, 0.9))]
    return docs, rows


def _blocks(texts: list[str]) -> int:
    """Blocks a source of these texts packs into (every unit's blocks plus the tails shard, train/pack.py)."""
    blocks, tail = pack_token_lists([[1] * len(t) for t in texts], BLOCK, eos_id=0)
    tails, _ = pack_tails([tail], BLOCK)
    return len(blocks) + len(tails)


@pytest.mark.parametrize("packing", ["shuffled", "megadocs"])
def test_the_mixer_is_exact_to_one_block_per_stream_over_a_million_blocks(packing):
    docs, rows = _corpus(24_000)
    if packing == "shuffled":  # the documents, and each format's texts one after another
        sources = {"documents": _blocks([d["text"] for d in docs])}
        sources |= {f"format:{f}": _blocks([r["text"] for r in rows if r["kind"] == f"rewrite:{f}"]) for f in FORMATS}
        shares = {"documents": 0.4, "format:faq": 0.2, "format:table": 0.1, "format:tutorial": 0.3}
    else:  # each document followed by its rewrites, and one format's rows joined per document
        sources = {"megadocs": _blocks(megadocs(rows, leading=docs)),
                   "format:faq": _blocks(megadocs([r for r in rows if r["kind"] == "rewrite:faq"]))}
        shares = {"megadocs": 0.8, "format:faq": 0.2}
    spec = MixSpec(0, {"web": 50_000}, {"web": 1.0}, 0.1, "replace", 11, sources, shares)
    assert spec.epoch_length >= 1_000_000, sources  # the claim is about 10^6 blocks
    for epoch in range(2):
        src, idx = epoch_stream(spec, epoch)
        counts = np.bincount(src, minlength=len(spec.sources))
        main = spec.epoch_length - spec.num_replay
        for code, name in enumerate(spec.sources):
            want = shares[name] * main if name in shares else 0.1 * spec.epoch_length
            assert abs(counts[code] - want) <= 1, (name, counts[code], want)  # exact to one block
            mine = idx[src == code]
            assert mine.min() >= 0 and mine.max() < (sources.get(name) or 50_000)
            if name in shares:
                assert len(np.unique(mine)) == len(mine)  # no stream repeats a block within an epoch
        # the epoch is the largest mix in which no stream repeats a block: one stream is used up (to rounding)
        # before replay takes its 10% of the places
        assert max(spec.main_counts[k] / 0.9 / sources[k] for k in shares) > 1 - 1e-4
        shares_realised = realised_shares(spec, epoch)
        assert abs(sum(shares_realised.values()) - 1) < 1e-9
    first, second = (epoch_stream(spec, e)[1][epoch_stream(spec, e)[0] == 0] for e in range(2))
    assert set(first.tolist()) != set(second.tolist())  # a stream's blocks left out change between epochs


def test_a_small_stream_with_a_large_share_sets_the_epoch():
    spec = MixSpec(0, {}, {}, 0.0, "replace", 0, {"documents": 100, "format:faq": 10_000},
                   {"documents": 0.5, "format:faq": 0.5})
    assert spec.main_counts == {"documents": 100, "format:faq": 100} and spec.epoch_length == 200
    src, idx = epoch_stream(spec, 0)
    assert sorted(idx[src == 0].tolist()) == list(range(100))  # every document once


def test_stream_config_errors():
    with pytest.raises(ValueError, match="sum to 1"):
        TrainConfig(streams={"documents": 0.5, "format:faq": 0.4})
    with pytest.raises(ValueError, match="unknown stream 'formats:faq'"):
        TrainConfig(streams={"documents": 0.5, "formats:faq": 0.5})
    with pytest.raises(ValueError, match="train.max_steps"):
        TrainConfig(streams={"documents": 1.0}, corpus="raw")
    with pytest.raises(Exception, match="no blocks"):
        MixSpec(0, {}, {}, 0.0, "replace", 0, {"documents": 10, "format:faq": 0}, {"documents": 0.5, "format:faq": 0.5})
    assert TrainConfig(streams={"documents": 0.25, "kind:pair": 0.25, "megadocs": 0.5}).streams
