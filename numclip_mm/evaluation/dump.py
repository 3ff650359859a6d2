"""Per-sample predictions to a CSV/Parquet file (no pickle), and reading them back for analysis.

``DumpOrdinalPredictions`` is a metric only in form: it collects predictions across ranks like any metric and the
main process writes them, so ``tools/test.py --out preds.csv`` works under distributed testing too.
"""
import os
import os.path as osp
import pickle
from typing import List, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmpretrain.registry import METRICS

from ..conformal import CalibrationLike, add_interval_columns, get_calibration
from .ordinal_metric import to_scalar

TABLE_FORMATS = ('.csv', '.parquet', '.pq')
BASE_COLUMNS = ('sample_idx', 'img_path', 'gt_value', 'gt_label', 'pred_value', 'pred_label', 'pred_bin_argmax')


def _table_format(path: str) -> str:
    ext = osp.splitext(path)[1].lower()
    if ext not in TABLE_FORMATS + ('.pkl', '.pickle'):
        raise ValueError(f'{path}: unsupported prediction file type {ext!r}; use one of {TABLE_FORMATS}')
    return ext


def samples_to_frame(samples: Sequence[dict], value_source: str = 'pred_value') -> pd.DataFrame:
    """Data-sample dicts -> one row each: sample_idx, img_path, gt/pred value and label, the arg-max bin, and with
    bin scores their probabilities and pred_score_0..K-1 (see :class:`DumpOrdinalPredictions`)."""
    rows = {c: [] for c in BASE_COLUMNS}
    scores = []
    for i, s in enumerate(samples):
        rows['sample_idx'].append(int(s.get('sample_idx', i)))
        rows['img_path'].append(s.get('img_path'))
        gt_label = s.get('gt_label')
        rows['gt_label'].append(-1 if gt_label is None else int(to_scalar(gt_label)))
        gt_value = s.get('gt_value', gt_label)
        rows['gt_value'].append(float('nan') if gt_value is None else to_scalar(gt_value))
        rows['pred_value'].append(to_scalar(s[value_source]) if value_source in s else float('nan'))
        score = s.get('pred_score')
        pred_label, argmax = s.get('pred_label'), s.get('pred_bin_argmax')
        if argmax is None and score is not None:
            argmax = torch.as_tensor(score).argmax()
        rows['pred_label'].append(-1 if pred_label is None else int(to_scalar(pred_label)))
        rows['pred_bin_argmax'].append(-1 if argmax is None else int(to_scalar(argmax)))
        scores.append(None if score is None else torch.as_tensor(score).detach().float().cpu().numpy().reshape(-1))
    frame = pd.DataFrame(rows)
    if scores and all(sc is not None for sc in scores):
        mat = np.stack(scores)
        rows_ = np.arange(len(mat))
        for name, index in (('pred_probability', frame['pred_label']), ('pred_bin_argmax_probability',
                                                                         frame['pred_bin_argmax'])):
            index = index.to_numpy()
            frame[name] = np.where(index >= 0, mat[rows_, index.clip(0)], np.nan)
        for k in range(mat.shape[1]):
            frame[f'pred_score_{k}'] = mat[:, k]
    return frame


@METRICS.register_module()
class DumpOrdinalPredictions(BaseMetric):
    """Write one row per sample to ``out_file_path`` (``.csv`` or ``.parquet``), sorted by ``sample_idx``.

    Columns: ``sample_idx, img_path, gt_value, gt_label`` (the true number and its bin), ``pred_value`` (the
    predicted number, clamped to the task's range), ``pred_label`` (the bin of ``pred_value``: label and number agree
    by construction), ``pred_bin_argmax`` (the arg-max bin of the bin probabilities, the coarse classification that
    :class:`OrdinalMetric` scores as ``accuracy``), ``pred_probability`` and ``pred_bin_argmax_probability`` (the
    probabilities of those two bins), ``pred_score_0..K-1`` (every bin's probability); -1 marks a missing bin. With
    a conformal ``calibration`` (path, dict or Calibration; docs/intervals.md) ``pred_low_<level>`` and
    ``pred_high_<level>`` for each calibrated level (``interval_method`` overrides the calibration's method).
    Returns no metrics.
    """
    default_prefix: Optional[str] = None

    def __init__(self, out_file_path: str, value_source: str = 'pred_value',
                 calibration: Optional[CalibrationLike] = None, interval_method: Optional[str] = None,
                 collect_device: str = 'cpu', prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix or 'dump')
        self.prefix = prefix
        ext = _table_format(out_file_path)
        if ext not in TABLE_FORMATS:
            raise ValueError(f'{out_file_path}: DumpOrdinalPredictions writes {TABLE_FORMATS} only (no pickle)')
        self.out_file_path = out_file_path
        self.value_source = value_source
        self.calibration = get_calibration(calibration)
        self.interval_method = interval_method

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        # One plain-typed row per sample, so that collect_results can gather them across ranks.
        self.results.extend(samples_to_frame(data_samples, self.value_source).to_dict('records'))

    def compute_metrics(self, results: List[dict]) -> dict:
        frame = pd.DataFrame(results)
        if len(frame):
            frame = frame.sort_values('sample_idx', kind='stable').reset_index(drop=True)
            if self.calibration is not None:
                add_interval_columns(frame, self.calibration, method=self.interval_method)
        write_predictions(frame, self.out_file_path)
        print_log(f'wrote {len(frame)} predictions to {self.out_file_path}', logger='current')
        return {}


def write_predictions(frame: pd.DataFrame, path: str) -> str:
    ext = _table_format(path)
    if osp.dirname(path):
        os.makedirs(osp.dirname(path), exist_ok=True)
    if ext == '.csv':
        frame.to_csv(path, index=False)
    elif ext in ('.parquet', '.pq'):
        frame.to_parquet(path, index=False)
    else:
        raise ValueError(f'{path}: write predictions as {TABLE_FORMATS}')
    return path


def load_predictions(path: str, trusted_pickle: bool = False) -> pd.DataFrame:
    """Read predictions written by :class:`DumpOrdinalPredictions` (CSV/Parquet).

    mmengine's ``DumpResults`` pickles (``.pkl``) are read only with ``trusted_pickle=True``: unpickling runs code
    from the file, so do it only for files you produced yourself.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'prediction file {path} does not exist')
    ext = _table_format(path)
    if ext == '.csv':
        frame = pd.read_csv(path)
    elif ext in ('.parquet', '.pq'):
        frame = pd.read_parquet(path)
    else:
        if not trusted_pickle:
            raise ValueError(f'{path} is a pickle; pass trusted_pickle=True only for a file you produced, or dump '
                             'with DumpOrdinalPredictions to CSV/Parquet')
        with open(path, 'rb') as f:
            frame = samples_to_frame(pickle.load(f))
    missing = [c for c in ('gt_value', 'pred_value') if c not in frame.columns]
    if missing:
        raise ValueError(f'{path}: missing prediction column(s) {missing}; the file has {list(frame.columns)}')
    return frame
