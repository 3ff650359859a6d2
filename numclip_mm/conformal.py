"""Split-conformal prediction intervals from the predicted number and the bin probabilities (see docs/intervals.md).

A calibration set of n held-out samples gives one nonconformity score per sample; for a level ``1 - alpha`` the
interval of a new sample is every number whose score would not exceed ``q``, the ``ceil((n + 1)(1 - alpha))``-th
smallest calibration score. If calibration and test samples are exchangeable, the test coverage is at least
``1 - alpha`` (Vovk et al. 2005; Lei et al. 2018), whatever the model.

Methods (the score; the interval; ``p`` the predicted number, ``y`` the truth):

- ``absolute``: ``|y - p|``; ``[p - q, p + q]``, the same width everywhere.
- ``scaled``: ``|y - p| / (s + floor)`` with ``s`` the standard deviation of the bin distribution over the task's
  anchors; ``[p - q (s + floor), p + q (s + floor)]``: narrow where the model puts its mass on few bins.
- ``cqr``: conformalised quantiles of the bin distribution (Romano et al. 2019): ``lo, hi`` are its
  ``alpha/2`` and ``1 - alpha/2`` quantiles (mid-CDF at the anchors, linear in between), the score is
  ``max(lo - y, y - hi)`` and the interval ``[lo - q, hi + q]``.

Every interval is clipped to the task's range ``[edges[0], upper]``; ``q = inf`` (too few calibration samples
for the level) gives the whole range.
"""
import datetime
import json
import math
import os.path as osp
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np

from .shared import file_digest, level_key
from .tasks import OrdinalTask, TaskLike, get_task

METHODS = ('absolute', 'scaled', 'cqr')
DEFAULT_METHOD = 'scaled'  # narrowest at equal coverage on the demo benchmark, see docs/intervals.md
SIDECAR_SUFFIX = '.calibration.json'
FORMAT_VERSION = 1


def check_levels(levels: Iterable[float]) -> Tuple[float, ...]:
    """Levels as a tuple of floats in (0, 1); raises naming the bad ones."""
    levels = tuple(float(v) for v in np.asarray(levels, dtype=np.float64).reshape(-1))
    bad = [v for v in levels if not 0 < v < 1]
    if not levels or bad:
        raise ValueError(f'coverage levels must lie in (0, 1), e.g. 0.9; got {list(levels)}')
    return levels


def conformal_quantile(scores, levels) -> np.ndarray:
    """The split-conformal threshold of each level: the ``ceil((n + 1) * level)``-th smallest score.

    ``inf`` when that rank exceeds n (the set is too small for the level: e.g. n < 9 for 0.9). Tied scores need
    no special care: the order statistic is one of them, and the intervals are closed (``score <= q``), so the
    coverage only grows with ties. Returns an array shaped like ``levels`` (a scalar level gives shape ``()``).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if np.isnan(scores).any():
        raise ValueError(f'conformal_quantile: {int(np.isnan(scores).sum())} NaN score(s)')
    levels_arr = np.asarray(levels, dtype=np.float64)
    check_levels(levels_arr.reshape(-1))
    n = len(scores)
    # round before ceil: (n + 1) * level is 9.000000000000002 for n = 9, level = 0.9 in binary floating point
    rank = np.ceil(np.round((n + 1) * levels_arr, 9)).astype(np.int64)
    ordered = np.sort(scores)
    if n == 0:
        return np.full(levels_arr.shape, np.inf)
    return np.where(rank <= n, ordered[np.clip(rank - 1, 0, n - 1)], np.inf)


def bin_spread(probs, anchors) -> np.ndarray:
    """Standard deviation of each row's bin distribution over the anchors: ``sqrt(sum_k p_k (a_k - mean)^2)``."""
    probs, anchors = np.asarray(probs, dtype=np.float64), np.asarray(anchors, dtype=np.float64)
    mean = probs @ anchors
    var = probs @ anchors ** 2 - mean ** 2
    return np.sqrt(np.clip(var, 0, None))


def bin_quantile(probs, anchors, tau) -> np.ndarray:
    """Quantile ``tau`` (scalar or per row) of each row's bin distribution.

    The CDF is taken at the mid-points of the bins' masses (``F(a_k) = P(<k) + p_k / 2``) and is linear between
    anchors, so the quantiles move smoothly with the probabilities (each bin's mass is spread half towards each
    neighbouring anchor); below the first or above the last mid-point the quantile is the first or last anchor.
    """
    probs, anchors = np.asarray(probs, dtype=np.float64), np.asarray(anchors, dtype=np.float64)
    probs = probs / probs.sum(1, keepdims=True)
    mid = np.cumsum(probs, 1) - probs / 2  # (N, K), non-decreasing
    tau = np.broadcast_to(np.asarray(tau, dtype=np.float64), (len(probs),))[:, None]
    j = (mid < tau).sum(1)  # the first anchor whose mid-CDF reaches tau
    k = len(anchors)
    lo_i, hi_i = np.clip(j - 1, 0, k - 1), np.clip(j, 0, k - 1)
    rows = np.arange(len(probs))
    m0, m1 = mid[rows, lo_i], mid[rows, hi_i]
    w = np.where(m1 > m0, (tau[:, 0] - m0) / np.where(m1 > m0, m1 - m0, 1), 0.0)
    return anchors[lo_i] + np.clip(w, 0, 1) * (anchors[hi_i] - anchors[lo_i])


def default_scale_floor(task: OrdinalTask) -> float:
    """The floor added to the spread of the ``scaled`` method: 5 % of the mean anchor spacing, so that a model
    that is (over)sure of one bin still gets an interval of a sensible width."""
    anchors = np.asarray(task.anchors, dtype=np.float64)
    return float(0.05 * np.diff(anchors).mean())


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f'unknown interval method {method!r}; choose from {METHODS}')
    return method


def nonconformity(method: str, pred_value, probs, gt_value, anchors, level: float = 0.9,
                  scale_floor: float = 0.0) -> np.ndarray:
    """The nonconformity score of each sample (``level`` matters only for ``cqr``)."""
    p, y = np.asarray(pred_value, dtype=np.float64), np.asarray(gt_value, dtype=np.float64)
    if _check_method(method) == 'absolute':
        return np.abs(y - p)
    if method == 'scaled':
        return np.abs(y - p) / (bin_spread(probs, anchors) + scale_floor)
    alpha = 1 - level
    lo, hi = bin_quantile(probs, anchors, alpha / 2), bin_quantile(probs, anchors, 1 - alpha / 2)
    return np.maximum(lo - y, y - hi)


def interval_bounds(method: str, q: float, pred_value, probs, anchors, value_range: Tuple[float, float],
                    level: float = 0.9, scale_floor: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` of each sample for threshold ``q``, clipped to ``value_range``."""
    p = np.asarray(pred_value, dtype=np.float64)
    if not np.isfinite(q):
        return np.full(p.shape, value_range[0]), np.full(p.shape, value_range[1])
    if _check_method(method) == 'absolute':
        low, high = p - q, p + q
    elif method == 'scaled':
        half = q * (bin_spread(probs, anchors) + scale_floor)
        low, high = p - half, p + half
    else:
        alpha = 1 - level
        low = bin_quantile(probs, anchors, alpha / 2) - q
        high = bin_quantile(probs, anchors, 1 - alpha / 2) + q
        centre = (low + high) / 2  # a negative q can cross the bounds: collapse to the centre then
        low, high = np.minimum(low, centre), np.maximum(high, centre)
    low = np.clip(low, *value_range)
    high = np.clip(high, *value_range)
    return low, np.maximum(high, low)


def sidecar_path(checkpoint: str) -> str:
    """Where the calibration of a checkpoint lives: ``<checkpoint>.calibration.json``."""
    return str(checkpoint) + SIDECAR_SUFFIX


def find_calibration(checkpoint: Optional[str]) -> Optional[str]:
    """The calibration sidecar of a checkpoint if one exists, else None."""
    return sidecar_path(checkpoint) if checkpoint and osp.isfile(sidecar_path(checkpoint)) else None


@dataclass
class Calibration:
    """Fitted split-conformal thresholds of every method for some coverage levels, plus where they came from.

    ``quantiles[method][level_key(level)]`` is the threshold ``q``; ``method`` is the one :meth:`intervals` uses
    unless told otherwise. ``source`` records the split, its size, the date, the config and the checkpoint digest.
    """
    method: str
    levels: Tuple[float, ...]
    quantiles: Dict[str, Dict[str, float]]
    anchors: Tuple[float, ...]
    value_range: Tuple[float, float]
    scale_floor: float
    task: str = ''
    source: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        _check_method(self.method)
        self.levels = check_levels(self.levels)
        missing = [(m, level_key(v)) for m in (self.method,) for v in self.levels
                   if level_key(v) not in self.quantiles.get(m, {})]
        if missing:
            raise ValueError(f'calibration has no threshold for {missing}')
        self.anchors = tuple(float(a) for a in self.anchors)
        self.value_range = (float(self.value_range[0]), float(self.value_range[1]))

    def threshold(self, level: float, method: Optional[str] = None) -> float:
        method = _check_method(method or self.method)
        table = self.quantiles.get(method, {})
        if level_key(level) not in table:
            raise KeyError(f'no {method!r} calibration for coverage {level_key(level)}; calibrated levels: '
                           f'{[level_key(v) for v in self.levels]} (run tools/calibrate.py with --coverage '
                           f'{level_key(level)})')
        return float(table[level_key(level)])

    def intervals(self, pred_value, probs, levels: Optional[Sequence[float]] = None,
                  method: Optional[str] = None) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """``{level_key: (low, high)}`` for the given levels (default: all calibrated ones)."""
        method = method or self.method
        out = {}
        for level in (self.levels if levels is None else check_levels(levels)):
            q = self.threshold(level, method)
            out[level_key(level)] = interval_bounds(method, q, pred_value, probs, self.anchors, self.value_range,
                                                    level, self.scale_floor)
        return out

    # -- (de)serialisation: plain JSON, inf written as null --
    def to_dict(self) -> dict:
        d = asdict(self)
        d['format_version'] = FORMAT_VERSION
        d['quantiles'] = {m: {k: (v if math.isfinite(v) else None) for k, v in t.items()}
                          for m, t in self.quantiles.items()}
        d['value_range'] = [v if math.isfinite(v) else None for v in self.value_range]
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = 'calibration') -> 'Calibration':
        d = dict(d)
        d.pop('format_version', None)
        try:
            d['quantiles'] = {m: {k: (float('inf') if v is None else float(v)) for k, v in t.items()}
                              for m, t in d['quantiles'].items()}
            lo, hi = d['value_range']
            d['value_range'] = (float(lo), float('inf') if hi is None else float(hi))
            return cls(**d)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f'{where}: not a valid calibration ({e})') from None

    def save(self, path: str) -> str:
        with open(path, 'w') as f:
            json.dump(self.to_dict(), f, indent=2)
        return path

    @classmethod
    def load(cls, path: str) -> 'Calibration':
        if not osp.isfile(path):
            raise FileNotFoundError(f'calibration file {path} does not exist (make one with tools/calibrate.py)')
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f'{path}: not JSON ({e})') from None
        return cls.from_dict(d, where=path)


CalibrationLike = Union[str, dict, Calibration]


def check_checkpoint(calibration: Calibration, checkpoint: str, digest: Optional[str] = None) -> None:
    """Raise if the calibration was fitted for another checkpoint (its thresholds would not hold for this one).
    ``digest``: the checkpoint's sha256 when already known (else the file is hashed)."""
    want = calibration.source.get('checkpoint_sha256')
    if want and (digest or file_digest(checkpoint)) != want:
        raise ValueError(f'the calibration was fitted for another checkpoint than {checkpoint} (sha256 differs); '
                         f'run tools/calibrate.py again for this checkpoint')


def get_calibration(calibration: Optional[CalibrationLike]) -> Optional[Calibration]:
    """A :class:`Calibration` from a file path, a dict (a config) or itself; None stays None."""
    if calibration is None or isinstance(calibration, Calibration):
        return calibration
    if isinstance(calibration, str):
        return Calibration.load(calibration)
    if isinstance(calibration, dict):
        return Calibration.from_dict(calibration)
    raise TypeError(f'calibration must be a path, dict or Calibration, got {type(calibration).__name__}')


def fit_calibration(pred_value, probs, gt_value, task: TaskLike, levels: Sequence[float],
                    method: str = DEFAULT_METHOD, scale_floor: Optional[float] = None,
                    source: Optional[dict] = None) -> Calibration:
    """Thresholds of every method for every level from one calibration set (rows: samples)."""
    task = get_task(task)
    levels = check_levels(levels)
    p, y = np.asarray(pred_value, dtype=np.float64), np.asarray(gt_value, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(p), task.num_bins) or len(y) != len(p):
        raise ValueError(f'fit_calibration: expected {len(p)} values, {len(p)} truths and ({len(p)}, '
                         f'{task.num_bins}) bin probabilities of task {task.name!r}; got {len(y)} truths and '
                         f'probabilities of shape {probs.shape}')
    keep = np.isfinite(p) & np.isfinite(y)
    p, y, probs = p[keep], y[keep], probs[keep]
    floor = default_scale_floor(task) if scale_floor is None else float(scale_floor)
    quantiles = {}
    for m in METHODS:
        quantiles[m] = {}
        for level in levels:
            scores = nonconformity(m, p, probs, y, task.anchors, level, floor)
            quantiles[m][level_key(level)] = float(conformal_quantile(scores, level))
    source = dict(source or {})
    source.setdefault('num_samples', int(keep.sum()))
    source.setdefault('created', datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))
    return Calibration(method=method, levels=levels, quantiles=quantiles, anchors=task.anchors,
                       value_range=task.value_range, scale_floor=floor, task=task.name, source=source)


def score_columns(frame) -> list:
    """The ``pred_score_0..K-1`` columns of a prediction frame, in bin order."""
    cols = [c for c in frame.columns if str(c).startswith('pred_score_')]
    return sorted(cols, key=lambda c: int(str(c).rsplit('_', 1)[1]))


def add_interval_columns(frame, calibration: CalibrationLike, levels: Optional[Sequence[float]] = None,
                         method: Optional[str] = None):
    """Add ``pred_low_<level>``/``pred_high_<level>`` to a prediction frame (``pred_value``, ``pred_score_*``)."""
    calibration = get_calibration(calibration)
    cols = score_columns(frame)
    if len(cols) != len(calibration.anchors):
        raise ValueError(f'prediction frame has {len(cols)} pred_score_* columns, the calibration '
                         f'{len(calibration.anchors)} bins (task {calibration.task!r})')
    probs = frame[cols].to_numpy(np.float64)
    for key, (low, high) in calibration.intervals(frame['pred_value'].to_numpy(np.float64), probs, levels,
                                                  method).items():
        frame[f'pred_low_{key}'] = low
        frame[f'pred_high_{key}'] = high
    return frame


def coverage_and_width(low, high, gt_value) -> Tuple[float, float]:
    """Fraction of truths inside ``[low, high]`` and the mean width."""
    low, high, y = (np.asarray(a, dtype=np.float64) for a in (low, high, gt_value))
    return float(((y >= low) & (y <= high)).mean()), float((high - low).mean())
