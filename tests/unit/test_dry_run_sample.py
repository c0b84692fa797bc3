"""`synthesize --dry-run --sample`: a seeded share of the input read (estimate.py:sample_reads), each total
scaled by the share; checked against the full count on a long-tailed corpus."""

from __future__ import annotations

import json
import random

import pytest

from ray_entigraph.estimate import SAMPLE_STRATA, sample_reads

WORDS = ("harbour guild kestavel merchant ledger voyage lantern archive treaty council river bridge tower market "
         "salt copper weaver chart beacon tide").split()


def _lengths(n: int, seed: int = 7) -> list[int]:
    """Words per document: log-normal (median 12, sigma 1.3), a long tail up to 4,000 words."""
    rng = random.Random(seed)
    return [min(4000, max(3, int(rng.lognormvariate(2.5, 1.3)))) for _ in range(n)]


def test_windows_cover_the_share_exactly_and_every_record_is_read_at_most_once():
    files = [("a.jsonl", "jsonl", 10_000_000), ("b.txt", "txt", 300), ("c.jsonl", "jsonl", 2_500_001)]
    reads = sample_reads(files, 0.01, seed=3)
    covered = sum(end - start for url, _, start, end in reads if start is not None)
    total = sum(size for *_, size in files)
    assert abs(covered - 0.01 * (total - 300)) <= 2 * SAMPLE_STRATA  # byte rounding at each window's ends
    ranges = sorted((url, start, end) for url, _, start, end in reads if start is not None)
    for (u1, _, e1), (u2, s2, _) in zip(ranges, ranges[1:]):
        assert u1 != u2 or e1 <= s2  # disjoint: a line starting in one range is in no other
    assert sample_reads(files, 0.01, seed=3) == reads and sample_reads(files, 0.01, seed=4) != reads
    assert sample_reads(files, 1.0, seed=3)  # the whole corpus: every byte in some window


def test_a_long_tailed_corpus_is_estimated_from_a_one_percent_sample(tmp_path, capsys):
    """10^5 generated documents (JSON Lines in 4 files, log-normal lengths with a long tail, long ones chunked):
    the dry run from a 1% sample is within 10% of the full dry run on documents, tokens, requests and prompt
    tokens (seeded: the same sample every run)."""
    from ray_entigraph.cli import main

    rng = random.Random(11)
    pool = [rng.choice(WORDS) for _ in range(10_000)]
    lengths = _lengths(100_000)
    for f in range(4):
        with open(tmp_path / f"part-{f}.jsonl", "w") as out:
            for i, n in enumerate(lengths[f::4]):
                start = rng.randrange(len(pool))
                text = " ".join((pool[start:] + pool[:start])[:n]) if n > len(pool) - start else " ".join(
                    pool[start:start + n])
                out.write(json.dumps({"title": f"Doc {f}-{i}", "text": f"Record {f}-{i}. {text}."}) + "\n")
    args = ["synthesize", "--dry-run", "--json", f"input.path={tmp_path}", f"output_dir={tmp_path}/run",
            "ingest.max_document_tokens=512", "plan.max_pairs_per_doc=4"]
    assert main(args) == 0
    full = json.loads(capsys.readouterr().out)
    assert main([*args, "--sample", "0.01"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert full["num_documents"] > 100_000 and 500 < est["sampled_documents"] < 2_000  # long ones were chunked
    for key in ("num_documents", "num_document_tokens", "num_relation_requests", "num_prompt_tokens"):
        assert est[key] == pytest.approx(full[key], rel=0.10), key
    print(" ".join(f"{k}={est[k] / full[k]:.3f}" for k in ("num_documents", "num_document_tokens",
                                                           "num_prompt_tokens")))
