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
    band_keys,
    bucket_pairs,
    candidate_probability,
    clusters,
    duplicates_to_drop,
    estimated_jaccard,
    lsh_params,
    shingles,
    signature,
)

REPO = Path(__file__).resolve().parents[3]

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
    """The pipeline's flow with plain dicts: signatures -> band keys -> buckets -> pairs -> clusters."""
    bands, rows = lsh_params(threshold, 128)
    sigs = {id_: signature(text) for id_, text in texts.items()}
    buckets: dict[str, list[str]] = defaultdict(list)
    for id_, sig in sigs.items():
        for key in band_keys(sig, bands=bands, rows=rows):
            buckets[key].append(id_)
    pairs = [pair for ids in buckets.values() if len(ids) > 1 for pair in bucket_pairs(ids, [sigs[i] for i in ids])]
    return duplicates_to_drop(pairs, threshold)


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
        "import json; from ray_entigraph.text.dedup import signature, band_keys; "
        f"s = signature({text!r}); print(json.dumps([s.tolist(), band_keys(s, bands=9, rows=13)]))"
    )
    # Another hash seed in the child: a str hash() anywhere in the path would give other values.
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=REPO, timeout=120)
    values, keys = json.loads(out.stdout)

    here = signature(text)
    assert here.dtype == SIGNATURE_DTYPE and here.shape == (128,)
    assert values == here.tolist()
    assert keys == band_keys(here, bands=9, rows=13)


def test_signature_golden_values():
    # Pins datasketch's permutations, scheme and hash function: a change here changes every signature.
    sig = signature("Hello, world! This is a test of the thing.")
    assert sig[:4].tolist() == [6676008083323431906, 1110549454826987255, 616393961833226788, 1275342857445324286]
    assert band_keys(sig, bands=2, rows=3) == ["0:07305957b429433c", "1:40c119afdef7c174"]


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
        band_keys(signature("x"), bands=bands, rows=rows + 20)


def test_band_keys_agree_per_band():
    sig = signature(paragraph(random.Random(3), 100))
    changed = sig.copy()
    changed[20] += 1  # inside band 1 of (8 bands x 16 rows)
    keys, keys_changed = band_keys(sig, bands=8, rows=16), band_keys(changed, bands=8, rows=16)

    assert len(keys) == 8 and len(set(keys)) == 8
    assert [k == c for k, c in zip(keys, keys_changed)] == [True, False] + [True] * 6
    assert band_keys(sig.astype(">u8"), bands=8, rows=16) == keys  # byte order does not matter


def test_clusters_are_transitive_with_the_smallest_id_as_representative():
    assert clusters([("b", "a"), ("c", "b")]) == {"a": "a", "b": "a", "c": "a"}
    # the smallest id joins last, through the far end of a chain
    assert clusters([("d", "e"), ("b", "c"), ("c", "e"), ("e", "a"), ("x", "y")]) == {
        "a": "a", "b": "a", "c": "a", "d": "a", "e": "a", "x": "x", "y": "x"}


def test_clusters_are_order_independent_and_match_connected_components():
    rng = random.Random(4)
    ids = [f"t{rng.randrange(10**6):06d}" for _ in range(60)]
    pairs = [(rng.choice(ids), rng.choice(ids)) for _ in range(45)]

    # reference: connected components by search, representative = min of the component
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in pairs:
        graph[a].add(b)
        graph[b].add(a)
    expected: dict[str, str] = {}
    for start in graph:
        if start not in expected:
            component, stack = {start}, [start]
            while stack:
                for nxt in graph[stack.pop()] - component:
                    component.add(nxt)
                    stack.append(nxt)
            expected.update({x: min(component) for x in component})

    assert clusters(pairs) == expected
    for _ in range(20):
        shuffled = [(b, a) if rng.random() < 0.5 else (a, b) for a, b in rng.sample(pairs, len(pairs))]
        result = clusters(shuffled)
        assert result == expected and list(result) == sorted(expected)


def test_duplicates_to_drop_filters_by_similarity_then_clusters():
    pairs = [("a", "b", 0.9), ("b", "c", 0.85), ("a", "c", 0.5), ("d", "e", 0.79), ("e", "f", 0.8), ("e", "f", 0.8)]
    assert duplicates_to_drop(pairs, 0.8) == {"b": "a", "c": "a", "f": "e"}
    assert duplicates_to_drop(pairs, 0.95) == {}


def test_bucket_pairs_collapse_identical_signatures_without_changing_clusters():
    rng = random.Random(5)
    base = paragraph(rng, 120)
    texts = {"k3": base, "k1": base, "k2": base, "k5": replace_words(rng, base, 60, 1), "k4": paragraph(rng, 120)}
    ids = list(texts)
    sigs = [signature(texts[i]) for i in ids]

    pairs = bucket_pairs(ids, sigs)
    all_pairs = [(a, b, estimated_jaccard(sa, sb)) for (a, sa), (b, sb) in itertools.combinations(zip(ids, sigs), 2)]

    assert ("k1", "k2", 1.0) in pairs and ("k1", "k3", 1.0) in pairs and not any(p[:2] == ("k2", "k3") for p in pairs)
    assert all(a < b for a, b, _ in pairs)
    assert len(pairs) == 2 + 3  # two stars into k1, then k1 / k4 / k5 pairwise
    assert duplicates_to_drop(pairs, 0.8) == duplicates_to_drop(all_pairs, 0.8) == {"k2": "k1", "k3": "k1", "k5": "k1"}
