"""Near-duplicate detection for the synthetic corpus: MinHash signatures, LSH band keys, clusters.

Pure functions, no Ray in them. Two texts are near-duplicates when the Jaccard similarity of their word
n-gram shingle sets (after lowercasing and stripping punctuation) is at or above a threshold. MinHash
(`datasketch`, fixed seed and permutation scheme) turns each text into `num_perm` integers whose
per-position agreement estimates that similarity; LSH cuts the signature into `bands` bands of `rows`
values, and two texts become candidates only if some band is identical, which is likely above the
threshold and unlikely well below it (`lsh_params`).

How a Ray Data pipeline runs it (`stages/curate.py`):

1. Driver: `bands, rows = lsh_params(threshold, num_perm)`, once.
2. `map_batches`, distributed over blocks: for each row `sig = signature(text)` and
   `band_keys(sig, bands=bands, rows=rows)`; emit one row per band, `(band_key, id, sig.tobytes())`
   (a flat map; decode with `np.frombuffer(b, dtype=SIGNATURE_DTYPE)`).
3. `groupby("band_key").map_groups(...)`: every group is one LSH bucket. Buckets of one row (almost all of
   them) emit nothing; a larger bucket emits `bucket_pairs(ids, sigs)`, its candidate pairs with their
   estimated Jaccard, so the signatures travel with the band rows and no second lookup is needed.
4. Driver (or one final task): `duplicates_to_drop(pairs, threshold)` over the collected pairs, a union-find
   over the few pairs there are, giving `{dropped id: kept id}`; the kept id is the smallest of its cluster.
5. A second pass over the corpus drops the rows whose id is in that (small, broadcast) dict.

Why this scales and streams: step 2 looks at one row at a time, so blocks flow through with bounded memory
and no worker ever holds the corpus. Pairs are formed only inside buckets, never across the corpus, so the
work is proportional to the number of rows times bands plus the (few) candidate pairs, not to N^2. Step 3
is a hash-partitioned shuffle (Ray Data spills it to the object store and disk), and each `map_groups`
call holds only one bucket. The shuffle carries about `bands * (key + id + num_perm * 8 bytes)` per row,
~10 KiB at the defaults (9 bands, 128 permutations). The driver sees only candidate pairs: with
`lsh_params`' choice, two unrelated texts (Jaccard near 0) practically never share a bucket.

Determinism: shingles are hashed with datasketch's SHA1-based hash (never Python's salted `hash()`), the
permutations come from a fixed seed, and band keys are BLAKE2b digests of little-endian bytes, so the same
text gives the same signature and keys in every process, on every machine, in every run. Clusters and
their representatives do not depend on the order of rows or pairs.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

SIGNATURE_DTYPE = np.dtype("<u8")
"""The dtype of `signature`'s values (little-endian uint64), for decoding signatures sent as bytes."""

# datasketch >= 2.0 permutation scheme: a * h + b mod 2^64 over a 64-bit SHA1 hash of the shingle. Named
# explicitly so that a change of datasketch's default cannot silently change signatures.
_SCHEME = "affine64"

_NOT_WORD = re.compile(r"[\W_]+")


def normalise_for_shingles(text: str) -> list[str]:
    """The words of `text`: NFKC, case-folded, every run of punctuation or whitespace a single separator."""
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split()


def shingles(text: str, n: int = 5) -> set[bytes]:
    """The set of word `n`-grams of the normalised text, UTF-8 encoded.

    A text of fewer than `n` words gives one shingle, the whole normalised text (an empty text gives
    `{b""}`), so short texts still have a signature and compare as equal only when their words are equal.
    """
    if n < 1:
        raise ValueError(f"n (words per shingle) must be >= 1, got {n}")
    words = normalise_for_shingles(text)
    if len(words) < n:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


@functools.lru_cache(maxsize=8)
def _empty_minhash(num_perm: int, seed: int):
    # Building the permutations costs more than a short text's update; copies share them.
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME)


def signature(text: str, *, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> np.ndarray:
    """The MinHash signature of `text`'s `ngram`-word shingles: `num_perm` uint64 values (`SIGNATURE_DTYPE`).

    Deterministic across processes, machines and runs for the same (text, num_perm, ngram, seed) and
    datasketch major version. Two signatures are comparable only if they share num_perm, ngram and seed.
    """
    if num_perm < 1:
        raise ValueError(f"num_perm must be >= 1, got {num_perm}")
    minhash = _empty_minhash(num_perm, seed).copy()
    minhash.update_batch(shingles(text, ngram))
    return minhash.hashvalues.astype(SIGNATURE_DTYPE, copy=False)


def signatures(texts: Iterable[str], *, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> np.ndarray:
    """`signature` of every text, stacked as a (len(texts), num_perm) array: the per-batch form."""
    rows = [signature(t, num_perm=num_perm, ngram=ngram, seed=seed) for t in texts]
    return np.stack(rows) if rows else np.empty((0, num_perm), dtype=SIGNATURE_DTYPE)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The share of positions where two signatures agree: an unbiased estimate of the shingle Jaccard."""
    a, b = np.asarray(sig_a), np.asarray(sig_b)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"signatures must be 1-D and of equal, non-zero length; got shapes {a.shape} and {b.shape}")
    return float(np.count_nonzero(a == b)) / a.size


def band_keys(sig: np.ndarray, *, bands: int, rows: int) -> list[str]:
    """One LSH key per band, `"{band index}:{digest of the band's values}"`; texts sharing a key are candidates.

    The band index is part of the key, so equal values in different bands never collide. Values past
    `bands * rows` are unused.
    """
    values = np.asarray(sig)
    if bands < 1 or rows < 1 or bands * rows > values.size:
        raise ValueError(
            f"bands * rows must be between 1 and the signature length {values.size}, got bands={bands}, "
            f"rows={rows}; take them from lsh_params(threshold, num_perm) with the signature's num_perm"
        )
    data = np.ascontiguousarray(values[: bands * rows], dtype=values.dtype.newbyteorder("<"))
    return [
        f"{i}:{hashlib.blake2b(data[i * rows : (i + 1) * rows].tobytes(), digest_size=8).hexdigest()}"
        for i in range(bands)
    ]


def candidate_probability(similarity: float, *, bands: int, rows: int) -> float:
    """The S-curve: the probability that two texts of this Jaccard share at least one band key."""
    return 1.0 - (1.0 - similarity**rows) ** bands


def _trapezoid(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return ((y[..., 1:] + y[..., :-1]) * np.diff(x)).sum(axis=-1) / 2.0


@functools.lru_cache(maxsize=64)
def lsh_params(
    threshold: float,
    num_perm: int,
    *,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted false positive + negative probability.

    For every (b, r) the S-curve P(s) = 1 - (1 - s^r)^b is the probability that a pair of Jaccard s becomes a
    candidate. The false positive probability is the area under P over [0, threshold], the false negative
    probability the area above P over [threshold, 1] (both integrated numerically, s uniform); the pair with
    the smallest weighted sum wins (ties: fewer bands, then fewer rows). This is the usual integral criterion.

    With equal weights and a high threshold the curve's steep part sits above the threshold: at 0.8 and 128
    permutations it picks (9, 13), which makes a pair at exactly 0.8 a candidate with probability 0.40 and one
    at 0.9 with 0.93. Raise `false_negative_weight` where missed duplicates cost more than extra candidate
    comparisons (which the similarity filter rejects cheaply): (0.2, 0.8) gives (12, 10), 0.74 at 0.8.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if num_perm < 1:
        raise ValueError(f"num_perm must be >= 1, got {num_perm}")
    if false_positive_weight < 0 or false_negative_weight < 0 or false_positive_weight + false_negative_weight <= 0:
        raise ValueError("false_positive_weight and false_negative_weight must be >= 0 and not both 0")
    params = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=float)
    b, r = params[:, :1], params[:, 1:]
    below = np.linspace(0.0, threshold, 1001)
    above = np.linspace(threshold, 1.0, 1001)
    false_positive = _trapezoid(1.0 - (1.0 - below**r) ** b, below)
    false_negative = _trapezoid((1.0 - above**r) ** b, above)
    error = false_positive_weight * false_positive + false_negative_weight * false_negative
    best = int(np.argmin(error))  # first minimum: params are in (b, r) order
    return int(params[best, 0]), int(params[best, 1])


def bucket_pairs(ids: Sequence[str], sigs: Sequence[np.ndarray]) -> list[tuple[str, str, float]]:
    """The candidate pairs of one LSH bucket, `(smaller id, larger id, estimated Jaccard)`.

    Members with identical signatures (exact duplicates, mostly) are paired only with the smallest id among
    them, at 1.0, and only that id is compared with the rest: the clusters are those of all pairs, but a
    bucket of k identical texts costs k pairs instead of k^2 / 2. Repeated ids are ignored.
    """
    if len(ids) != len(sigs):
        raise ValueError(f"ids and sigs must have equal length, got {len(ids)} and {len(sigs)}")
    groups: dict[bytes, list[str]] = {}
    first_sig: dict[bytes, np.ndarray] = {}
    for id_, sig in zip(ids, sigs):
        digest = np.asarray(sig).tobytes()
        groups.setdefault(digest, []).append(id_)
        first_sig.setdefault(digest, sig)
    pairs: list[tuple[str, str, float]] = []
    heads: list[tuple[str, np.ndarray]] = []
    for digest, members in groups.items():
        head, *rest = sorted(set(members))
        pairs.extend((head, other, 1.0) for other in rest)
        heads.append((head, first_sig[digest]))
    heads.sort(key=lambda h: h[0])
    for i, (id_a, sig_a) in enumerate(heads):
        for id_b, sig_b in heads[i + 1 :]:
            if id_a != id_b:  # one id with two different signatures: not a pair with itself
                pairs.append((id_a, id_b, estimated_jaccard(sig_a, sig_b)))
    return pairs


def clusters(candidate_pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Union-find over the pairs: every id that occurs in a pair, mapped to the smallest id of its cluster.

    The root of a set is always its smallest member (a union makes the smaller root the parent), so the
    result does not depend on the order of the pairs or of the ids within a pair.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in candidate_pairs:
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            low, high = sorted((root_a, root_b))
            parent[high] = low
    return {x: find(x) for x in sorted(parent)}


def duplicates_to_drop(
    candidate_pairs_with_similarity: Iterable[tuple[str, str, float]], threshold: float
) -> dict[str, str]:
    """`{dropped id: kept id}`: pairs at or above `threshold` are clustered and all but the smallest id dropped.

    Clustering is transitive: if a~b and b~c pass the threshold, c is dropped in favour of a even when a and
    c alone would not pass (a chain of small edits). A pair listed more than once (it shared several bands)
    counts once.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    kept = clusters((a, b) for a, b, similarity in candidate_pairs_with_similarity if similarity >= threshold)
    return {x: representative for x, representative in kept.items() if x != representative}
