"""Near-duplicate detection for the synthetic corpus: MinHash signatures, LSH band keys, clusters.

Pure functions, no Ray in them. Two texts are near-duplicates when the Jaccard similarity of their word
n-gram shingle sets (after lowercasing and stripping punctuation) is at or above a threshold. MinHash
(`datasketch`, fixed seed and permutation scheme) turns each text into `num_perm` integers whose
per-position agreement estimates that similarity; LSH cuts the signature into `bands` bands of `rows`
values, and two texts become candidates only if some band is identical, which is likely above the
threshold and unlikely well below it (`lsh_params`).

How the curate stage runs it (`stages/curate.py`), with nothing gathered on the driver:

1. One task per partition: `signature` of every row, then `verified_star_edges` over the partition's rows
   (candidates from shared band keys, each checked against the threshold on the signatures: the rows of one
   document share a heading, so their candidates are checked, not trusted), then `components`; the partition's
   other rows emit one `(band key, row id)` pair per band from `band_hashes`: 16 bytes, no signature, no
   string (`row_id` packs partition, shard ordinal and row into an int64).
2. A hash shuffle on the band key puts each bucket in one block; `star_edges` links its members to its
   smallest id (k members cost k edges and a sort, however hot the bucket).
3. One task: `components` (scipy's connected components) of the cross-partition edges; every member but the
   smallest id of its component is dropped.

Why this scales: steps 1 and 2 look at one partition or one block at a time; pairs are formed only inside
buckets, never across the corpus; the shuffle carries `bands * 16` bytes per row (192 at 12 bands); only
edges reach step 3, and they are few: two unrelated texts (Jaccard near 0) practically never share a band.

Determinism: shingles are hashed with datasketch's SHA1-based hash (never Python's salted `hash()`), the
permutations come from a fixed seed, and band keys are uint64 arithmetic on the values, so the same text
gives the same signature and keys in every process, on every machine, in every run. Components and their
representatives do not depend on the order of rows or edges.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable

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


ID_PARTITION_SHIFT, ID_SHARD_SHIFT = 40, 20
_ID_FIELD = (1 << ID_SHARD_SHIFT) - 1
MAX_PARTITION = (1 << (63 - ID_PARTITION_SHIFT)) - 1


def row_id(partition: int, shard: int, row: int) -> int:
    """A synthetic row's integer id for dedup: its partition, its shard's ordinal in the partition, its row in
    the shard (8 bytes, where a task id is 32 characters). Ordinals come from the committed layout, so every
    pass over the corpus gives a row the same id."""
    if not (0 <= partition <= MAX_PARTITION and 0 <= shard <= _ID_FIELD and 0 <= row <= _ID_FIELD):
        raise ValueError(f"row id out of range: partition {partition} (max {MAX_PARTITION}), shard {shard} and row "
                         f"{row} (max {_ID_FIELD} each); a synthetic shard of over a million rows is not expected")
    return (partition << ID_PARTITION_SHIFT) | (shard << ID_SHARD_SHIFT) | row


def row_id_parts(id_: int) -> tuple[int, int, int]:
    """(partition, shard ordinal, row) of a `row_id`."""
    id_ = int(id_)
    return id_ >> ID_PARTITION_SHIFT, (id_ >> ID_SHARD_SHIFT) & _ID_FIELD, id_ & _ID_FIELD


def _mix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit finaliser (SplitMix64's): every input bit reaches every output bit."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def band_hashes(sigs: np.ndarray, *, bands: int, rows: int) -> np.ndarray:
    """One 64-bit LSH key per band for every signature: a (n, bands) uint64 array from (n, num_perm)
    signatures (one 1-D signature gives one row). Rows sharing a key in some band are candidates.

    The band index is hashed in, so equal values in different bands never collide; values past `bands * rows`
    are unused. Plain uint64 arithmetic, so the keys are the same in every process and on every machine.
    """
    values = np.atleast_2d(np.asarray(sigs))
    if bands < 1 or rows < 1 or bands * rows > values.shape[1]:
        raise ValueError(
            f"bands * rows must be between 1 and the signature length {values.shape[1]}, got bands={bands}, "
            f"rows={rows}; take them from lsh_params(threshold, num_perm) with the signature's num_perm"
        )
    grid = values[:, : bands * rows].astype(np.uint64).reshape(len(values), bands, rows)
    keys = _mix64(np.broadcast_to(np.arange(1, bands + 1, dtype=np.uint64), grid.shape[:2]).copy())
    for j in range(rows):
        keys = _mix64(keys ^ grid[:, :, j])
    return keys


def star_edges(keys: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The candidate edges of the rows sharing LSH keys: every member of a bucket linked to the bucket's
    smallest id (a star, not every pair: a bucket of k rows costs k edges and one sort, even a hot bucket of
    every copy of one text). `keys` and `ids` are parallel 1-D arrays (one entry per row and band); the
    components of the stars are those of all pairs."""
    keys, ids = np.asarray(keys, dtype=np.uint64), np.asarray(ids, dtype=np.int64)
    if keys.shape != ids.shape or keys.ndim != 1:
        raise ValueError(f"keys and ids must be parallel 1-D arrays, got shapes {keys.shape} and {ids.shape}")
    if not len(keys):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.lexsort((ids, keys))
    keys, ids = keys[order], ids[order]
    first = np.r_[True, keys[1:] != keys[:-1]]
    heads = ids[np.maximum.accumulate(np.where(first, np.arange(len(ids)), 0))]
    member = ~first & (ids != heads)
    return heads[member], ids[member]


def verified_star_edges(ids: np.ndarray, sigs: np.ndarray, *, bands: int, rows: int,
                        threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Within one set of rows (a partition's): the star edges whose two signatures agree on at least
    `threshold` of their positions (estimated Jaccard), as (smaller id, larger id, similarity). Rows of one
    document share a heading and a forced opening, so their candidates are checked, not trusted."""
    ids, sigs = np.asarray(ids, dtype=np.int64), np.atleast_2d(np.asarray(sigs))
    if not len(ids):
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    keys = band_hashes(sigs, bands=bands, rows=rows)
    a, b = star_edges(keys.reshape(-1), np.repeat(ids, keys.shape[1]))
    if not len(a):
        return a, b, np.empty(0)
    pairs = np.unique(np.stack([a, b], axis=1), axis=0)
    position = {int(i): k for k, i in enumerate(ids)}
    ia = np.fromiter((position[int(x)] for x in pairs[:, 0]), np.int64, len(pairs))
    ib = np.fromiter((position[int(x)] for x in pairs[:, 1]), np.int64, len(pairs))
    similarity = (sigs[ia] == sigs[ib]).mean(axis=1)
    keep = similarity >= threshold
    return pairs[keep, 0], pairs[keep, 1], similarity[keep]


def components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the edges (a[i], b[i]) (scipy's, linear in the edges): every id that occurs
    in an edge, sorted, and the smallest id of its component. The result does not depend on the order of the
    edges or of the ids within an edge."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if not len(a):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    nodes = np.unique(np.concatenate([a, b]))
    ia, ib = np.searchsorted(nodes, a), np.searchsorted(nodes, b)
    graph = coo_matrix((np.ones(len(a), np.int8), (ia, ib)), shape=(len(nodes), len(nodes)))
    _, labels = connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)  # nodes are sorted: a label's first node is its smallest
    return nodes, nodes[first][labels]
