"""Plots of a prediction file written by ``tools/test.py --out preds.csv`` (DumpOrdinalPredictions).

Writes ``scatter.png`` (predicted vs true number, with y = x), ``confusion.png`` (bin confusion matrix with counts)
and ``mae_per_bin.png`` (MAE by true bin) into ``--out-dir`` and prints their paths. When the file has conformal
interval columns (``pred_low_<level>``/``pred_high_<level>``, written by tools/test.py for a calibrated checkpoint)
or ``--calibration`` is given, the scatter draws each interval as an error bar (red where it misses the truth) and
its title gives the empirical coverage and mean width.

Usage: python tools/analysis/plot_predictions.py PRED_FILE --out-dir DIR [--level 0.9] [--calibration CAL.json]
"""
import argparse
import os
import os.path as osp
import sys

import numclip_mm.register  # noqa: F401  (registration; also makes torchvision importable first)

import matplotlib  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from numclip_mm.conformal import add_interval_columns, coverage_and_width, level_key  # noqa: E402
from numclip_mm.evaluation.dump import load_predictions  # noqa: E402
from numclip_mm.evaluation.ordinal_metric import confusion  # noqa: E402


def interval_levels(frame):
    """The levels (as written in the column names) that have both interval columns, in file order."""
    return [c[len('pred_low_'):] for c in frame.columns
            if str(c).startswith('pred_low_') and f'pred_high_{c[len("pred_low_"):]}' in frame.columns]


def plot_scatter(frame, path, level=None):
    """The scatter, with the intervals of ``level`` (a column-name level such as '0.9') as error bars; returns
    the title."""
    y, p = frame['gt_value'].to_numpy(float), frame['pred_value'].to_numpy(float)
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    title = f'predicted vs true (MAE {np.abs(p - y).mean():.3f}, n={len(y)})'
    if level is not None:
        low, high = frame[f'pred_low_{level}'].to_numpy(float), frame[f'pred_high_{level}'].to_numpy(float)
        miss = (y < low) | (y > high)
        # jitter x a little: ordinal truths repeat, and stacked bars would hide each other
        x = y + np.random.default_rng(0).uniform(-0.15, 0.15, len(y)) * (np.diff(np.unique(y)).min(initial=1))
        for sel, colour, name in ((~miss, 'tab:blue', 'covers truth'), (miss, 'tab:red', 'misses truth')):
            if sel.any():
                ax.errorbar(x[sel], p[sel], yerr=np.stack([p[sel] - low[sel], high[sel] - p[sel]]).clip(0),
                            fmt='o', ms=2.5, lw=0.6, alpha=0.5, color=colour, label=f'{level} interval, {name}')
        cov, width = coverage_and_width(low, high, y)
        lo, hi = float(min(lo, low.min())), float(max(hi, high.max()))
        title += f'\n{level} interval: coverage {100 * cov:.1f}%, mean width {width:.3f}'
    else:
        ax.scatter(y, p, s=12, alpha=0.5, edgecolors='none')
    ax.plot([lo, hi], [lo, hi], 'r--', lw=1, label='y = x')
    ax.set(xlabel='true value', ylabel='predicted value', title=title)
    ax.legend(loc='upper left', fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return title


def plot_confusion(frame, path):
    gt, pred = frame['gt_label'].to_numpy(int), frame['pred_label'].to_numpy(int)
    known = (gt >= 0) & (pred >= 0)  # -1 marks a missing label in the dump
    gt, pred = gt[known], pred[known]
    k = int(max(gt.max(), pred.max()) + 1)
    score_cols = [c for c in frame.columns if c.startswith('pred_score_')]
    k = max(k, len(score_cols))
    mat = confusion(gt, pred, k)
    fig, ax = plt.subplots(figsize=(1.0 * k + 2, 1.0 * k + 1.5), dpi=100)
    im = ax.imshow(mat, cmap='Blues')
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(mat[i, j]), ha='center', va='center',
                    color='white' if mat[i, j] > mat.max() / 2 else 'black')
    ax.set(xticks=range(k), yticks=range(k), xlabel='predicted bin', ylabel='true bin',
           title=f'bin confusion (accuracy {100 * np.trace(mat) / max(mat.sum(), 1):.1f}%)')
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_mae_per_bin(frame, path):
    gt = frame['gt_label'].to_numpy(int)
    err = np.abs(frame['pred_value'].to_numpy(float) - frame['gt_value'].to_numpy(float))
    bins, inverse = np.unique(gt, return_inverse=True)
    counts = np.bincount(inverse)
    mae = np.bincount(inverse, weights=err) / counts
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    bars = ax.bar(bins.astype(str), mae, color='tab:orange')
    for bar, n in zip(bars, counts):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f'n={n}', ha='center', va='bottom', fontsize=8)
    ax.set(xlabel='true bin', ylabel='MAE', title='MAE per true bin')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description='Plot ordinal predictions (scatter, confusion, MAE per bin).')
    parser.add_argument('pred_file', help='CSV/Parquet written by DumpOrdinalPredictions (tools/test.py --out)')
    parser.add_argument('--out-dir', required=True, help='folder for the PNGs')
    parser.add_argument('--level', type=float, help='interval level to draw (default: the widest in the file)')
    parser.add_argument('--calibration', help='compute the intervals from this calibration (tools/calibrate.py) '
                                              'and the pred_score_* columns')
    args = parser.parse_args(argv)
    frame = load_predictions(args.pred_file)
    if args.calibration:
        add_interval_columns(frame, args.calibration)
    levels = interval_levels(frame)
    level = None
    if args.level is not None:
        level = level_key(args.level)
        if level not in levels:
            parser.error(f'{args.pred_file}: no pred_low_{level}/pred_high_{level} columns; interval levels in the '
                         f'file: {levels or "none"} (calibrate with tools/calibrate.py, or pass --calibration)')
    elif levels:
        level = max(levels, key=float)
    frame = frame[np.isfinite(frame['pred_value'].to_numpy(float)) & np.isfinite(frame['gt_value'].to_numpy(float))]
    if not len(frame):
        parser.error(f'{args.pred_file}: no rows with both a prediction and a ground truth')
    os.makedirs(args.out_dir, exist_ok=True)
    paths = []
    for name, fn in (('scatter.png', lambda f, p: plot_scatter(f, p, level)), ('confusion.png', plot_confusion),
                     ('mae_per_bin.png', plot_mae_per_bin)):
        path = osp.join(args.out_dir, name)
        fn(frame, path)
        paths.append(path)
        print(path)
    return paths


if __name__ == '__main__':
    main()
