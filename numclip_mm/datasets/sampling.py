"""Training-set subsampling protocols of OrdinalCLIP/NumCLIP (docs/method.md §11), vectorised and seeded.

Both work on the raw values (e.g. each integer age), not on the coarse bins, and return sorted indices so that the
kept samples stay in annotation order.
"""
import numpy as np


def _rank_within_value(values: np.ndarray, rng: np.random.Generator):
    """A random rank 0..n_v-1 of each sample among the samples with the same value, plus value ids and counts."""
    uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    order = rng.permutation(len(values))
    order = order[np.argsort(inverse[order], kind='stable')]  # grouped by value, shuffled inside each group
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values)) - np.repeat(starts, counts)
    return rank, inverse, counts


def few_shot_indices(values, num_shots: int, seed: int = 0) -> np.ndarray:
    """Indices of ``num_shots`` samples per raw value, drawn without replacement (values with fewer keep all)."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return np.zeros(0, dtype=np.int64)
    rank, _, _ = _rank_within_value(values, np.random.default_rng(seed))
    return np.flatnonzero(rank < int(num_shots))


def label_shift_indices(values, num_topk: int, ratio: float, seed: int = 0) -> np.ndarray:
    """Indices after the label-distribution-shift protocol.

    The ``num_topk`` most frequent raw values (ties: the smaller value first) keep ``max(1, floor(ratio * count))``
    randomly drawn samples each; all other values keep all their samples.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f'label_shift ratio must be in (0, 1], got {ratio}')
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return np.zeros(0, dtype=np.int64)
    rank, inverse, counts = _rank_within_value(values, np.random.default_rng(seed))
    by_freq = np.lexsort((np.arange(len(counts)), -counts))  # most frequent first, then smaller value
    quota = counts.copy()
    top = by_freq[:int(num_topk)]
    quota[top] = np.maximum(1, np.floor(counts[top] * ratio).astype(np.int64))
    return np.flatnonzero(rank < quota[inverse])
