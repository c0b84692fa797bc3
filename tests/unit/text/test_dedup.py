"""Near-duplicate detection (text/dedup.py): planted duplicates found end to end, determinism, LSH choice, clusters."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from ray_entigraph.text.dedup import (
    SIGNATURE_DTYPE,
    band_hashes,
    candidate_probability,
    components,
    estimated_jaccard,
    lsh_params,
    row_id,
    row_id_parts,
    shingles,
    signature,
    star_edges,
    verified_star_edges,
)

REPO = Path(__file__).resolve().parents[3]
# band_hashes of the golden signature below at (2 bands x 3 rows): a change here changes every LSH key
GOLDEN_BANDS = [12672411400619253982, 6318386359568234272]

WORDS = (
    "amber basin cedar delta ember falcon garnet harbor island juniper kettle lantern meadow nickel orchard "
    "pepper quarry raven saddle timber umber valley willow yarrow zephyr anchor bramble copper dune ferry "
    "glacier hollow ivory jetty kiln ledger marble nectar oyster pylon quiver reef spindle tundra urchin vessel "
    "wharf carries follows gathers hides keeps lifts mends opens pulls rests sings trades wanders builds counts "
    "ancient brisk crooked distant eager faint gentle idle jagged keen lofty mellow narrow pale quiet rugged "
    "silent tall vast weary young bright cold dusty"
).split()
NEW_WORDS = ["zinc", "quartz", "obsidian", "saffron", "cobalt", "indigo"]  # not in WORDS: an edit is a real change


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 14))]
    return " ".join(words).capitalize() + "."


def paragraph(rng: random.Random, num_words: int) -> str:
    out: list[str] = []
    while sum(len(s.split()) for s in out) < num_words:
        out.append(sentence(rng))
    return " ".join(out)


def replace_words(rng: random.Random, text: str, start: int, count: int) -> str:
    words = text.split()
    for i in range(start, start + count):
        words[i] = rng.choice(NEW_WORDS)
    return " ".join(words)


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def find_duplicates(texts: dict[str, str], threshold: float) -> dict[str, str]:
    """The pipeline's flow within one partition, ids in the order of the names: signatures -> band keys ->
    star edges checked against the threshold -> components -> {dropped: kept}."""
    bands, rows = lsh_params(threshold, 128)
    names = sorted(texts)
    ids = np.arange(len(names), dtype=np.int64)
    sigs = np.stack([signature(texts[n]) for n in names])
    a, b, _ = verified_star_edges(ids, sigs, bands=bands, rows=rows, threshold=threshold)
    members, roots = components(a, b)
    return {names[m]: names[r] for m, r in zip(members, roots) if m != r}


def test_planted_near_duplicates_are_found_and_nothing_else():
    rng = random.Random(0)
    # 250-word paragraphs: with 5-word shingles every changed word changes up to 5 shingles, so on ~80 words
    # a 2-3 word edit is already at Jaccard 0.78-0.86, where LSH tuned for 0.8 finds a pair 40-70% of the
    # time. Here the edits below stay at 0.92-0.96 (checked below), a planted duplicate by any reading of 0.8.
    originals = {f"p{i:02d}": paragraph(rng, 250) for i in range(30)}
    middle = len(originals["p01"].split()) // 2
    planted = {  # dup id -> (original id, text); dup ids sort after their original, so it is kept
        "p00-exact": ("p00", originals["p00"]),
        "p00-one-word": ("p00", replace_words(rng, originals["p00"], 40, 1)),
        "p01-one-word": ("p01", replace_words(rng, originals["p01"], middle, 1)),
        "p02-two-words": ("p02", replace_words(rng, originals["p02"], 70, 2)),
        "p03-three-words": ("p03", replace_words(rng, originals["p03"], middle, 3)),
        "p04-sentence-appended": ("p04", originals["p04"] + " " + sentence(rng)),
        "p05-case-and-punctuation": ("p05", originals["p05"].upper().replace(".", "!")),
        "p06-three-words-at-start": ("p06", replace_words(rng, originals["p06"], 0, 3)),
    }
    texts = {**originals, **{dup: text for dup, (_, text) in planted.items()}}
    assert planted["p00-exact"][1] == originals["p00"]
    for dup, (original, text) in planted.items():  # the set is what it claims to be
        assert 0.9 <= jaccard(text, originals[original]) <= 1.0, dup
    assert max(jaccard(originals[a], originals[b]) for a, b in itertools.combinations(originals, 2)) < 0.05

    dropped = find_duplicates(texts, threshold=0.8)

    assert dropped == {dup: original for dup, (original, _) in planted.items()}
    assert not set(dropped) & set(originals)  # precision: no distinct paragraph dropped


def test_distinct_texts_sharing_a_long_heading_are_kept():
    rng = random.Random(1)
    # Like the rows of one document: the same heading and forced opening, then a different body.
    heading = (
        '## Relations in "The Salt Roads of Kestavel": the ferry guilds, the salt tax and the northern caravans\n\n'
        "The following discussion analyses how the entities below relate to each other in the book."
    )
    texts = {f"t{i:02d}": f"{heading} {paragraph(rng, 50)}" for i in range(12)}
    texts["t00-copy"] = texts["t00"] + " Indeed."  # the control: the same row again is still caught
    assert 0.15 < jaccard(texts["t01"], texts["t02"]) < 0.4  # the heading is a sizeable share of every row

    assert find_duplicates(texts, threshold=0.8) == {"t00-copy": "t00"}


def test_signatures_are_deterministic_across_processes():
    text = 'Kestavel\'s salt roads: the "ferry guilds" trade north, and the caravans follow them.'
    code = (
        "import json; from ray_entigraph.text.dedup import signature, band_hashes; "
        f"s = signature({text!r}); print(json.dumps([s.tolist(), band_hashes(s, bands=9, rows=13)[0].tolist()]))"
    )
    # Another hash seed in the child: a str hash() anywhere in the path would give other values.
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=REPO, timeout=120)
    values, keys = json.loads(out.stdout)

    here = signature(text)
    assert here.dtype == SIGNATURE_DTYPE and here.shape == (128,)
    assert values == here.tolist()
    assert keys == band_hashes(here, bands=9, rows=13)[0].tolist()


def test_signature_golden_values():
    # Pins datasketch's permutations, scheme and hash function: a change here changes every signature.
    sig = signature("Hello, world! This is a test of the thing.")
    assert sig[:4].tolist() == [6676008083323431906, 1110549454826987255, 616393961833226788, 1275342857445324286]
    assert band_hashes(sig, bands=2, rows=3)[0].tolist() == GOLDEN_BANDS


def test_shingles_normalise_and_cover_short_texts():
    assert shingles("The Ferry, the SALT -- and  the\nroads!", n=3) == shingles("the ferry the salt and the roads", n=3)
    assert shingles("one two three four five six", n=5) == {b"one two three four five", b"two three four five six"}
    assert shingles("Too short, only five", n=6) == {b"too short only five"}
    assert shingles("", n=5) == {b""}
    assert signature("A b c").tolist() == signature("a, B; c!").tolist()
    assert signature("a b c").tolist() != signature("a b d").tolist()


def test_estimated_jaccard_tracks_the_true_jaccard():
    rng = random.Random(2)
    errors = []
    for _ in range(20):
        base = paragraph(rng, 200).split()
        keep = rng.randint(20, 180)  # share a prefix of varying length, then diverge
        other = base[:keep] + paragraph(rng, 200 - keep).split()
        a, b = " ".join(base), " ".join(other)
        errors.append(abs(estimated_jaccard(signature(a), signature(b)) - jaccard(a, b)))
    assert np.mean(errors) < 0.04 and max(errors) < 0.15  # std of the estimate is at most 0.044 at 128 perms
    with pytest.raises(ValueError):
        estimated_jaccard(np.zeros(4, SIGNATURE_DTYPE), np.zeros(5, SIGNATURE_DTYPE))


def test_lsh_params_separate_the_threshold():
    bands, rows = lsh_params(0.8, 128)

    assert bands * rows <= 128
    assert candidate_probability(0.9, bands=bands, rows=rows) >= 0.9
    assert candidate_probability(0.5, bands=bands, rows=rows) <= 0.1
    for threshold, num_perm in [(0.5, 64), (0.7, 256), (0.9, 128), (1.0, 128)]:
        b, r = lsh_params(threshold, num_perm)
        assert 1 <= b * r <= num_perm
    # weighting false negatives more moves the curve's steep part down: more recall at the threshold
    recall_first = lsh_params(0.8, 128, false_positive_weight=0.2, false_negative_weight=0.8)
    assert candidate_probability(0.8, bands=recall_first[0], rows=recall_first[1]) > \
        candidate_probability(0.8, bands=bands, rows=rows)
    with pytest.raises(ValueError, match="lsh_params"):
        band_hashes(signature("x"), bands=bands, rows=rows + 20)


def test_band_hashes_agree_per_band():
    sig = signature(paragraph(random.Random(3), 100))
    changed = sig.copy()
    changed[20] += 1  # inside band 1 of (8 bands x 16 rows)
    keys, keys_changed = band_hashes(sig, bands=8, rows=16)[0], band_hashes(changed, bands=8, rows=16)[0]

    assert keys.dtype == np.uint64 and len(set(keys.tolist())) == 8
    assert (keys == keys_changed).tolist() == [True, False] + [True] * 6
    assert band_hashes(sig.astype(">u8"), bands=8, rows=16)[0].tolist() == keys.tolist()  # byte order does not matter
    same_values = np.tile(sig[:16], 8)  # every band holds the same values: the band index still tells them apart
    assert len(set(band_hashes(same_values, bands=8, rows=16)[0].tolist())) == 8
    both = band_hashes(np.stack([sig, changed]), bands=8, rows=16)
    assert both.shape == (2, 8) and both[1].tolist() == keys_changed.tolist()


def test_row_ids_round_trip_and_refuse_overflow():
    assert row_id_parts(row_id(3, 7, 11)) == (3, 7, 11)
    assert row_id(0, 0, 1) < row_id(0, 1, 0) < row_id(1, 0, 0)  # partition, then shard, then row order
    with pytest.raises(ValueError, match="out of range"):
        row_id(0, 0, 2**20)


def test_components_are_transitive_with_the_smallest_id_as_representative():
    members, roots = components(np.array([2, 3]), np.array([1, 2]))
    assert dict(zip(members.tolist(), roots.tolist())) == {1: 1, 2: 1, 3: 1}
    # the smallest id joins last, through the far end of a chain
    members, roots = components(np.array([4, 2, 3, 5, 24]), np.array([5, 3, 5, 1, 25]))
    assert dict(zip(members.tolist(), roots.tolist())) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 24: 24, 25: 24}
    assert [x.tolist() for x in components(np.array([], np.int64), np.array([], np.int64))] == [[], []]


def test_components_are_order_independent_and_match_a_search():
    rng = random.Random(4)
    ids = [rng.randrange(10**12) for _ in range(60)]
    pairs = [(rng.choice(ids), rng.choice(ids)) for _ in range(45)]

    # reference: connected components by search, representative = min of the component
    graph: dict[int, set[int]] = defaultdict(set)
    for a, b in pairs:
        graph[a].add(b)
        graph[b].add(a)
    expected: dict[int, int] = {}
    for start in graph:
        if start not in expected:
            component, stack = {start}, [start]
            while stack:
                for nxt in graph[stack.pop()] - component:
                    component.add(nxt)
                    stack.append(nxt)
            expected.update({x: min(component) for x in component})

    for _ in range(10):
        shuffled = [(b, a) if rng.random() < 0.5 else (a, b) for a, b in rng.sample(pairs, len(pairs))]
        members, roots = components(np.array([p[0] for p in shuffled]), np.array([p[1] for p in shuffled]))
        assert dict(zip(members.tolist(), roots.tolist())) == expected and members.tolist() == sorted(expected)


def test_star_edges_link_each_bucket_to_its_smallest_id_in_linear_size():
    keys = np.array([7, 9, 7, 7, 9, 5, 7], dtype=np.uint64)
    ids = np.array([30, 2, 10, 20, 1, 99, 10], dtype=np.int64)  # id 10 twice in one bucket: no self edge
    a, b = star_edges(keys, ids)
    assert sorted(zip(a.tolist(), b.tolist())) == [(1, 2), (10, 20), (10, 30)]
    # a hot bucket: every copy of one text shares every band; k rows give k - 1 edges, not k^2 / 2
    hot = 10_000
    a, b = star_edges(np.zeros(hot, np.uint64), np.arange(hot, 0, -1, dtype=np.int64))
    assert len(a) == hot - 1 and set(a.tolist()) == {1}


def test_verified_star_edges_keep_only_pairs_at_the_threshold():
    rng = random.Random(5)
    base = paragraph(rng, 120)
    texts = [base, base, replace_words(rng, base, 60, 1), paragraph(rng, 120), base[: len(base) // 2]]
    sigs = np.stack([signature(t) for t in texts])
    bands, rows = lsh_params(0.8, 128)
    a, b, sim = verified_star_edges(np.arange(5, dtype=np.int64), sigs, bands=bands, rows=rows, threshold=0.8)
    edges = dict(zip(zip(a.tolist(), b.tolist()), sim.tolist()))
    assert set(edges) == {(0, 1), (0, 2)} and edges[(0, 1)] == 1.0 and edges[(0, 2)] >= 0.8
    # at a lower threshold the half-text (Jaccard about 0.5) joins through its shared bands
    a, b, _ = verified_star_edges(np.arange(5, dtype=np.int64), sigs, bands=16, rows=2, threshold=0.3)
    assert (0, 4) in set(zip(a.tolist(), b.tolist())) and 3 not in set(a.tolist()) | set(b.tolist())
