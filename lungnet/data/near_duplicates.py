"""Near-duplicate search over 256-bit dHashes: every pair within a Hamming threshold, without comparing all pairs.

Multi-index hashing (Norouzi et al., "Fast search in Hamming space with multi-index hashing", CVPR 2012) with a
search radius of 0 per block: the hash's bits are split into ``t + 1`` disjoint blocks (at least 4, so a block key
fits 64 bits) for a threshold of ``t`` bits, and by the pigeonhole principle two hashes within ``t`` bits agree
exactly on at least one block. Rows are bucketed by each block's value (a sort), the rows sharing a bucket are the
candidates, and each candidate is verified by a popcount, one uint64 word at a time (most candidates are dropped
after the first), so the result equals comparing every pair (`brute_force_pairs`). A pair that agrees on several
blocks is kept only at the first one.

Blocks take every ``(t + 1)``-th bit (bit ``k``, ``k + t + 1``, ...) rather than runs of neighbouring bits: a
dHash's neighbouring bits compare neighbouring cells of the same image row, are strongly correlated, and a block
of them takes few values (on 1496 real NIH radiographs 13 blocks of 20 strided bits carry about 9.8 bits of
collision entropy each, runs of 20 neighbouring bits as few as 4.5).

Growth: the work is ``O((N + M) * t * log(N + M) + C + K)`` for ``C`` candidates and ``K`` pairs found; ``C`` is
about ``N * M * (t + 1) * 2**-H`` for blocks of collision entropy ``H`` bits, so for a fixed threshold it still
grows as ``N * M`` in the end, with a small factor: about 1/50 of all pairs at ``t = 12`` on NIH-like hashes,
each far cheaper to drop than a full comparison. Measured (bench/near_duplicates.py, realistic hashes, one core):
a fitted exponent of 1.8 from 16k to 224k images against 2.0 for comparing every pair; 224k against themselves
in 9 CPU seconds, where comparing every pair takes about 2600 (extrapolated from 54 at 32k). When the blocks are
too short to pay (a large ``t``: candidates above an eighth of all pairs), the pairs are compared directly.
Memory: the unpacked bits of both sides while the keys are made (256 bytes a hash), then 8 bytes a hash and block
for the keys, and at most ``budget`` candidates at a time (80 MB peak at 224k).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

log = logging.getLogger(__name__)

HASH_BITS = 256
WORDS = HASH_BITS // 64
BRUTE_SHARE = 8  # compare all pairs when the candidates exceed 1/BRUTE_SHARE of them
PAIRS = ("train/val", "train/test", "val/test")


def hash_matrix(hashes: pd.Series) -> np.ndarray:
    """Hex 256-bit dHashes -> (N, 4) uint64 matrix (the bytes as they are: distances do not depend on the order)."""
    raw = b"".join(bytes.fromhex(h) for h in hashes)
    return np.frombuffer(raw, dtype=np.uint64).reshape(len(hashes), WORDS)


def brute_force_pairs(a: np.ndarray, b: np.ndarray, threshold: int, budget: int = 20_000_000) -> np.ndarray:
    """Every pair compared: (i, j, distance) rows with Hamming distance(a[i], b[j]) <= ``threshold``, in (i, j) order.

    Args:
        a: (N, words) uint64 hashes.
        b: (M, words) uint64 hashes.
        threshold: largest distance in bits that counts.
        budget: uint64 words held in memory per chunk.

    Returns:
        (K, 3) int64 array.
    """
    if not len(a) or not len(b):
        return np.zeros((0, 3), dtype=np.int64)
    step = max(1, budget // (len(b) * a.shape[1]))
    found = []
    for start in range(0, len(a), step):
        dist = np.bitwise_count(a[start : start + step, None, :] ^ b[None, :, :]).sum(-1)
        i, j = np.nonzero(dist <= threshold)
        found.append(np.stack([i + start, j, dist[i, j]], axis=1))
    return np.concatenate(found).astype(np.int64)


def _blocks(threshold: int) -> list[np.ndarray]:
    """The bit positions of each of the ``m = threshold + 1`` blocks (at least 4, keys of at most 64 bits): block k
    holds bits k, k + m, k + 2m, ..."""
    m = max(threshold + 1, WORDS)
    return [np.arange(k, HASH_BITS, m) for k in range(m)]


def _keys(bits: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """One block's value per row, as uint64, from (N, 256) unpacked bits."""
    packed = np.packbits(bits[:, positions], axis=1, bitorder="little")
    wide = np.zeros((len(bits), 8), dtype=np.uint8)
    wide[:, : packed.shape[1]] = packed
    return wide.view(np.uint64)[:, 0]


def _masks(blocks: list[np.ndarray]) -> np.ndarray:
    """(blocks, 4) uint64: each block's bits as a mask over the hash words (the layout `hash_matrix` gives)."""
    masks = np.zeros((len(blocks), HASH_BITS), dtype=np.uint8)
    for k, positions in enumerate(blocks):
        masks[k, positions] = 1
    return np.packbits(masks, axis=1).view(np.uint64)


def _unpack(hashes: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.ascontiguousarray(hashes).view(np.uint8), axis=1)


def _candidate_count(keys_a: np.ndarray, keys_b: np.ndarray) -> int:
    """Pairs sharing a key: the sum over shared values of (rows of a) x (rows of b)."""
    va, ca = np.unique(keys_a, return_counts=True)
    vb, cb = np.unique(keys_b, return_counts=True)
    _, ia, ib = np.intersect1d(va, vb, assume_unique=True, return_indices=True)
    return int((ca[ia].astype(np.int64) * cb[ib]).sum())


def _ragged_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for each (s, c), without a Python loop."""
    total = int(counts.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return np.arange(total, dtype=np.int64) + shift


def _buckets(keys_a: np.ndarray, keys_b: np.ndarray, within: bool):
    """Each candidate's two sides, as ranges of b's rows sorted by key: (a's rows, range starts, range lengths, b's
    sort order). Within one set a row's range is the rows after it in its bucket, so each pair comes once."""
    order = np.argsort(keys_b, kind="stable")
    sorted_b = keys_b[order]
    if within:
        starts = np.arange(1, len(order) + 1)
        return order, starts, np.searchsorted(sorted_b, sorted_b, side="right") - starts, order
    lo = np.searchsorted(sorted_b, keys_a, side="left")
    return np.arange(len(keys_a)), lo, np.searchsorted(sorted_b, keys_a, side="right") - lo, order


def _verify(cols_a: np.ndarray, cols_b: np.ndarray, i: np.ndarray, j: np.ndarray, threshold: int):
    """The candidates within ``threshold`` bits, as (i, j, distance); one word at a time, dropping
    the pairs already too far (most are after the first word), so few gathers are made."""
    d = np.zeros(len(i), dtype=np.uint16)
    for w in range(len(cols_a)):
        d += np.bitwise_count(cols_a[w][i] ^ cols_b[w][j])
        near = d <= threshold
        i, j, d = i[near], j[near], d[near]
    return i, j, d


def _block_pairs(a, b, k, keys_a, keys_b, masks, threshold, budget, within):
    """Verified pairs whose block ``k`` agrees exactly and no earlier block does (each pair once overall)."""
    rows, starts, counts, order = _buckets(keys_a, keys_b, within)
    cols_a, cols_b = a.T, b.T  # callers pass Fortran-ordered copies: one word of every row is contiguous
    live = np.flatnonzero(counts > 0)
    if not len(live):
        return []
    # chunks of rows holding at most `budget` candidates (one row's bucket may exceed it alone)
    ends = np.cumsum(counts[live])
    cuts = np.searchsorted(ends, np.arange(budget, int(ends[-1]), budget), side="right")
    found = []
    for part in np.split(live, np.unique(cuts)):
        if not len(part):
            continue
        i = np.repeat(rows[part], counts[part])
        j = order[_ragged_ranges(starts[part], counts[part])]
        i, j, d = _verify(cols_a, cols_b, i, j, threshold)
        if within:
            i, j = np.minimum(i, j), np.maximum(i, j)
        if k:
            x = a[i] ^ b[j]
            first = ~((x[:, None, :] & masks[None, :k, :]) == 0).all(axis=2).any(axis=1)
            i, j, d = i[first], j[first], d[first]
        found.append(np.stack([i, j, d.astype(np.int64)], axis=1))
    return found


def _search(a: np.ndarray, b: np.ndarray, threshold: int, budget: int, within: bool) -> np.ndarray:
    """`near_pairs` / `near_pairs_within` (``within``: ``a is b``, pairs i < j)."""
    threshold = int(threshold)
    empty = np.zeros((0, 3), dtype=np.int64)
    if not len(a) or not len(b) or threshold < 0:
        return empty
    if threshold + 1 > HASH_BITS // 4:  # blocks of fewer than 4 bits: buckets hold everyone
        return _brute(a, b, threshold, within)
    blocks = _blocks(threshold)
    bits_a = _unpack(a)
    bits_b = bits_a if within else _unpack(b)
    keys_a = [_keys(bits_a, positions) for positions in blocks]
    keys_b = keys_a if within else [_keys(bits_b, positions) for positions in blocks]
    del bits_a, bits_b
    candidates = sum(_candidate_count(ka, kb) for ka, kb in zip(keys_a, keys_b, strict=True))
    if candidates * BRUTE_SHARE > len(a) * len(b):
        return _brute(a, b, threshold, within)
    masks = _masks(blocks)
    fa = np.asfortranarray(a)
    fb = fa if within else np.asfortranarray(b)
    found = []
    for k in range(len(blocks)):
        found += _block_pairs(fa, fb, k, keys_a[k], keys_b[k], masks, threshold, budget, within)
    if not found:
        return empty
    out = np.concatenate(found).astype(np.int64)
    return out[np.lexsort((out[:, 1], out[:, 0]))]


def _brute(a: np.ndarray, b: np.ndarray, threshold: int, within: bool) -> np.ndarray:
    pairs = brute_force_pairs(a, b, threshold)
    return pairs[pairs[:, 0] < pairs[:, 1]] if within else pairs


def near_pairs(a: np.ndarray, b: np.ndarray, threshold: int, budget: int = 1_000_000) -> np.ndarray:
    """Index pairs (i, j) with Hamming distance(a[i], b[j]) <= ``threshold``: the result of `brute_force_pairs`, found
    by multi-index hashing (module docstring: how, and how the work grows).

    Args:
        a: (N, 4) uint64 hashes (`hash_matrix`).
        b: (M, 4) uint64 hashes.
        threshold: largest distance in bits that counts as a near duplicate.
        budget: candidate pairs verified at a time (bounds the memory: about 150 bytes each).

    Returns:
        (K, 3) int64 array of (i, j, distance), sorted by i, then j.
    """
    return _search(np.ascontiguousarray(a), np.ascontiguousarray(b), threshold, budget, within=False)


def near_pairs_within(hashes: np.ndarray, threshold: int, budget: int = 1_000_000) -> np.ndarray:
    """`near_pairs` of a set with itself: each pair (i, j) with i < j once, sorted by i, then j."""
    hashes = np.ascontiguousarray(hashes)
    return _search(hashes, hashes, threshold, budget, within=True)


def near_groups(table: pd.DataFrame, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Near-duplicate groups: rows joined by a chain of dHashes each within ``threshold`` bits (union-find).

    Args:
        table: rows with a ``dhash`` column (hex; '' for a row without one, which stays alone).
        threshold: largest distance in bits that counts as a near duplicate.

    Returns:
        (group, pairs): per row a group id (0, 1, ... in order of each group's first row), and the near pairs as
        (i, j, distance) rows over the table's positions.
    """
    hashed = np.flatnonzero(table["dhash"].fillna("").astype(str).str.len().to_numpy() == HASH_BITS // 4)
    pairs = near_pairs_within(hash_matrix(table["dhash"].iloc[hashed]), threshold)
    pairs[:, :2] = hashed[pairs[:, :2]]
    n = len(table)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    return pd.factorize(label)[0].astype(np.int64), pairs


def group_near_duplicates(table: pd.DataFrame, threshold: int) -> tuple[pd.DataFrame, dict]:
    """Adds a ``near_group`` column (`near_groups`): the splits keep each group on one side, as byte copies.

    Returns:
        (the table with ``near_group``, the ``near_duplicate_groups`` entry of ``data_report.json``: threshold,
        groups of two or more images, the images in them, the largest group's size).
    """
    group, pairs = near_groups(table, threshold)
    sizes = np.bincount(group) if len(group) else np.zeros(0, dtype=np.int64)
    shared = sizes[sizes > 1]
    summary = {
        "threshold": int(threshold),
        "groups": int(len(shared)),
        "images": int(shared.sum()),
        "largest": int(shared.max()) if len(shared) else 0,
        "pairs": int(len(pairs)),
    }
    log.info(
        "Near duplicates (dHash within %d bits): %d group(s) holding %d images, kept within one split each",
        threshold,
        summary["groups"],
        summary["images"],
    )
    if summary["largest"] > max(50, len(table) // 100):
        log.warning(
            "One near-duplicate group holds %d of %d images (chains of near copies): data.near_duplicate_threshold=%d "
            "may be too loose for this data set, and the split is coarser for it",
            summary["largest"],
            len(table),
            threshold,
        )
    table = table.copy()
    table["near_group"] = group
    return table, summary


def near_duplicate_report(table: pd.DataFrame, threshold: int, examples: int = 20) -> dict:
    """Images of the later split with a perceptual near duplicate (dHash distance <= ``threshold``) in the earlier.

    With a ``near_group`` column (`group_near_duplicates`, same threshold) only rows whose group reaches both splits
    are compared (every near pair lies within one group): the same result, without a search.

    Returns:
        ``{"near_duplicate_images": {"train/val": n, ...}, "near_duplicate_examples": [...]}``; exact
        copies count too (distance 0).
    """
    counts: dict[str, int] = {}
    listed: list[dict] = []
    for pair in PAIRS:
        first, second = pair.split("/")
        rows_a = table[(table["split"] == first) & (table["dhash"] != "")]
        rows_b = table[(table["split"] == second) & (table["dhash"] != "")]
        if "near_group" in table:
            both = np.intersect1d(rows_a["near_group"], rows_b["near_group"])
            rows_a, rows_b = rows_a[rows_a["near_group"].isin(both)], rows_b[rows_b["near_group"].isin(both)]
        pairs = near_pairs(hash_matrix(rows_a["dhash"]), hash_matrix(rows_b["dhash"]), threshold)
        counts[pair] = int(len(np.unique(pairs[:, 1])))
        for i, j, d in pairs[: max(0, examples - len(listed))]:
            listed.append(
                {"pair": pair, first: rows_a["path"].iloc[i], second: rows_b["path"].iloc[j], "distance": int(d)}
            )
    return {"near_duplicate_images": counts, "near_duplicate_examples": listed, "near_duplicate_threshold": threshold}
