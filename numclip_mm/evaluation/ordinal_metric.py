"""Ordinal-regression metrics over the predicted numbers and bins of a whole evaluation set."""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmpretrain.registry import METRICS

from ..conformal import CalibrationLike, coverage_and_width, get_calibration
from ..tasks import TaskLike, get_task

ALL_ITEMS = ('mae', 'accuracy', 'off_by_one', 'cs', 'spearman', 'qwk', 'mae_bin')


def to_scalar(x) -> float:
    """A float from a python number, numpy value or (one-element) tensor."""
    if isinstance(x, torch.Tensor):
        return float(x.detach().reshape(-1)[0].cpu())
    return float(np.asarray(x).reshape(-1)[0])


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    uniq, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts + 1  # rank of the first element of each tie group
    return (first + (counts - 1) / 2.0)[inverse]


def spearman(pred: np.ndarray, gt: np.ndarray) -> float:
    """Pearson correlation of the average ranks; NaN when either side is constant."""
    rp, rg = average_ranks(pred), average_ranks(gt)
    rp, rg = rp - rp.mean(), rg - rg.mean()
    denom = np.sqrt((rp ** 2).sum() * (rg ** 2).sum())
    return float((rp * rg).sum() / denom) if denom > 0 else float('nan')


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``C[i, j]`` = number of samples of true class i predicted as j."""
    return np.bincount(gt * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def quadratic_weighted_kappa(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """Cohen's kappa with weights ``w_ij = (i - j)^2 / (K - 1)^2``: ``1 - sum(w * O) / sum(w * E)``.

    ``O`` is the confusion matrix, ``E = outer(row sums, column sums) / N`` the one expected by chance. NaN when
    ``sum(w * E) = 0`` (all samples of one class on both sides).
    """
    observed = confusion(gt, pred, num_classes).astype(np.float64)
    expected = np.outer(observed.sum(1), observed.sum(0)) / max(observed.sum(), 1)
    idx = np.arange(num_classes)
    weights = (idx[:, None] - idx[None, :]) ** 2 / max(num_classes - 1, 1) ** 2
    denom = (weights * expected).sum()
    return float(1 - (weights * observed).sum() / denom) if denom > 0 else float('nan')


@METRICS.register_module()
class OrdinalMetric(BaseMetric):
    """MAE, accuracy and friends for ordinal regression.

    With predicted numbers ``p``, true numbers ``y``, predicted classes ``c'`` and true classes ``c`` over N samples:

    - ``mae``: ``mean |p - y|``.
    - ``accuracy`` (%): ``100 * mean(c' == c)``.
    - ``off_by_one`` (%): ``100 * mean(|c' - c| <= 1)``.
    - ``cs@k`` (%, cumulative score): ``100 * mean(|p - y| <= k)`` for each k of ``cs_thresholds``.
    - ``spearman``: Pearson correlation of the ranks of ``p`` and ``y``, ties given their average rank.
    - ``qwk``: quadratic weighted kappa of ``c'`` against ``c`` (see :func:`quadratic_weighted_kappa`).
    - ``mae_bin_{k}``: ``mean |p - y|`` over the samples whose true *bin* is k (each bin present).
    - ``coverage@{level}`` (%) and ``width@{level}``, only with a ``calibration``: the share of truths inside the
      conformal interval of each calibrated level and the intervals' mean width (docs/intervals.md).

    The classes, with ``accuracy_from='bin'`` (the default): ``c'`` is the arg-max bin of the bin probabilities
    (``pred_bin_argmax``, the coarse classification stage, as the released NumCLIP/OrdinalCLIP code scores it; for
    heads without a classifier, e.g. plain regression, the bin of ``p``) and ``c`` the true bin ``gt_label``. This is
    not always the bin of the reported number: a user-facing ``label`` (Predictor, scorer, ``tools/test.py --out``)
    is the bin of ``p``, whose accuracy is what ``task=...`` measures. With ``accuracy_from='value'`` the classes are
    ``round(p)`` and ``y`` (the HCI/aesthetics protocol of the released code, where the number is the grade).

    Keys are unprefixed by default so that ``save_best='mae'`` finds them. Only plain floats/ints are kept per
    sample, so mmengine's cross-rank collection works unchanged under distributed evaluation.

    Args:
        items (Sequence[str]): which of ``mae, accuracy, off_by_one, cs, spearman, qwk, mae_bin`` to compute.
        cs_thresholds (Sequence[float]): the k of ``cs@k``.
        accuracy_from (str): 'bin' or 'value', see above.
        value_source (str): the data-sample key of the predicted number.
        num_classes (int, optional): classes for ``qwk``; taken from ``task`` if given, else from the data.
        task (optional): an OrdinalTask (name/dict). When given, the classes of every class-based metric are the
            task's bins of the numbers (``bin(y)`` and ``bin(p)``, ``p`` clamped into the bins), not the labels:
            models with other bins (OrdinalCLIP's one class per rank) are then scored on the same bins as the rest.
        calibration (optional): a conformal calibration (the sidecar path written by tools/calibrate.py, its dict,
            or a :class:`~numclip_mm.conformal.Calibration`): adds ``coverage@``/``width@`` per level.
        interval_method (str, optional): the interval method to score; defaults to the calibration's own.
    """
    default_prefix: Optional[str] = None

    def __init__(self,
                 items: Sequence[str] = ALL_ITEMS,
                 cs_thresholds: Sequence[float] = (1, 2, 5),
                 accuracy_from: str = 'bin',
                 value_source: str = 'pred_value',
                 num_classes: Optional[int] = None,
                 task: Optional[TaskLike] = None,
                 calibration: Optional[CalibrationLike] = None,
                 interval_method: Optional[str] = None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix or 'ordinal')  # no "prefix not set" warning
        self.prefix = prefix
        unknown = sorted(set(items) - set(ALL_ITEMS))
        if unknown:
            raise ValueError(f'unknown OrdinalMetric items {unknown}; choose from {ALL_ITEMS}')
        if accuracy_from not in ('bin', 'value'):
            raise ValueError(f"accuracy_from must be 'bin' or 'value', got {accuracy_from!r}")
        self.items = tuple(items)
        self.cs_thresholds = tuple(cs_thresholds)
        self.accuracy_from = accuracy_from
        self.value_source = value_source
        self.task = None if task is None else get_task(task)
        if num_classes is None and self.task is not None:
            num_classes = self.task.num_bins
        self.num_classes = num_classes
        self.calibration = get_calibration(calibration)
        self.interval_method = interval_method
        if self.calibration is not None:  # fail now, not after a whole test epoch
            for level in self.calibration.levels:
                self.calibration.threshold(level, interval_method)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            if self.value_source not in sample:
                raise KeyError(f'OrdinalMetric: data sample has no {self.value_source!r}; keys: {sorted(sample)}')
            pred_label = sample.get('pred_bin_argmax')  # the coarse stage's bin (see the class docstring)
            if pred_label is None:  # samples of other heads, whose pred_label (mmpretrain's) is the arg-max
                pred_label = sample.get('pred_label')
            if pred_label is None:
                pred_label = torch.as_tensor(sample['pred_score']).argmax()
            gt_label = sample['gt_label']
            row = dict(
                pred_value=to_scalar(sample[self.value_source]),
                pred_label=int(to_scalar(pred_label)),
                gt_value=to_scalar(sample['gt_value'] if 'gt_value' in sample else gt_label),
                gt_label=int(to_scalar(gt_label)))
            if self.calibration is not None:  # the intervals need the bin probabilities (plain floats: collectable)
                row['pred_score'] = torch.as_tensor(sample['pred_score']).detach().float().cpu().reshape(-1).tolist()
            self.results.append(row)

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        keys = ('pred_value', 'gt_value', 'pred_label', 'gt_label')
        cols = {k: np.array([r[k] for r in results]) for k in keys}
        if self.calibration is not None:
            cols['pred_score'] = np.array([r['pred_score'] for r in results], dtype=np.float64)
        return self.calculate(**cols)

    def calculate(self, pred_value, gt_value, pred_label, gt_label, pred_score=None) -> Dict[str, float]:
        """The metrics of arrays of predictions (usable without a runner): ``pred_label`` is ``c'`` above (the
        arg-max bin: a ``tools/test.py --out`` file's ``pred_bin_argmax`` column); ``pred_score`` (N, K) only for
        the interval metrics."""
        p, y = np.asarray(pred_value, np.float64), np.asarray(gt_value, np.float64)
        pb, gb = np.asarray(pred_label, np.int64), np.asarray(gt_label, np.int64)
        if not len(p):
            raise ValueError('OrdinalMetric: no predictions to evaluate')
        if self.task is not None:
            edges = np.asarray(self.task.edges)
            gb = gc = self.task.value_to_bin(y)
            pc = np.clip(np.searchsorted(edges, p, side='right') - 1, 0, len(edges) - 1)
        elif self.accuracy_from == 'value':
            pc, gc = np.rint(p).astype(np.int64), np.rint(y).astype(np.int64)
        else:
            pc, gc = pb, gb
        err = np.abs(p - y)
        out: Dict[str, float] = {}
        if 'mae' in self.items:
            out['mae'] = float(err.mean())
        if 'accuracy' in self.items:
            out['accuracy'] = float(100.0 * (pc == gc).mean())
        if 'off_by_one' in self.items:
            out['off_by_one'] = float(100.0 * (np.abs(pc - gc) <= 1).mean())
        if 'cs' in self.items:
            for k in self.cs_thresholds:
                out[f'cs@{k:g}'] = float(100.0 * (err <= k).mean())
        if 'spearman' in self.items:
            out['spearman'] = spearman(p, y)
        if 'qwk' in self.items:
            k = self.num_classes or int(max(pc.max(), gc.max()) + 1)
            out['qwk'] = quadratic_weighted_kappa(np.clip(gc, 0, k - 1), np.clip(pc, 0, k - 1), k)
        if 'mae_bin' in self.items:
            bins, inverse = np.unique(gb, return_inverse=True)
            sums = np.bincount(inverse, weights=err)
            counts = np.bincount(inverse)
            out.update({f'mae_bin_{b}': float(s / c) for b, s, c in zip(bins.tolist(), sums, counts)})
        if self.calibration is not None:
            if pred_score is None:
                raise ValueError('OrdinalMetric: a calibration needs the bin probabilities (pred_score)')
            bounds = self.calibration.intervals(p, np.asarray(pred_score, np.float64), method=self.interval_method)
            for key, (low, high) in bounds.items():
                cov, width = coverage_and_width(low, high, y)
                out[f'coverage@{key}'], out[f'width@{key}'] = 100.0 * cov, width
        return out
