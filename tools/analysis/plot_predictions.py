"""Plots of a prediction file written by ``tools/test.py --out preds.csv`` (DumpOrdinalPredictions).

Writes ``scatter.png`` (predicted vs true number, with y = x; the true values are jittered sideways, since ordinal
truths repeat, and the bin edges drawn), ``confusion.png`` (true bin against the bin of the predicted value, with
counts) and ``mae_per_bin.png`` (MAE by true bin) into ``--out-dir`` and prints their paths. Bins are named by their
concepts and value ranges, taken from the task of ``--config`` (the config the predictions came from) or ``--task``
(a task name); without either they are numbered. When the file has conformal interval columns
(``pred_low_<level>``/``pred_high_<level>``, written by tools/test.py for a calibrated checkpoint) or
``--calibration`` is given, the scatter draws each interval as an error bar (red where it misses the truth) and its
title gives the empirical coverage and mean width.

Usage: python tools/analysis/plot_predictions.py PRED_FILE --out-dir DIR [--config CFG | --task NAME] [--level 0.9]
       [--calibration CAL.json]
"""
import argparse
import os
import os.path as osp
import sys

import matplotlib  # noqa: E402

import numclip_mm.register  # noqa: F401  (registration; also makes torchvision importable first)

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


def bin_names(task, k):
    """Tick labels of bins 0..k-1: 'concept\n[low, high)' from the task (the last bin closed at its ``upper`` or
    open), or 'bin i' without a task."""
    if task is None:
        return [f'bin {i}' for i in range(k)]
    if k > task.num_bins:
        raise ValueError(f'the file has bins up to {k - 1}, but task {task.name!r} has {task.num_bins}: is it the '
                         'task of these predictions?')
    edges = list(task.edges)
    ranges = [f'[{a:g}, {b:g})' for a, b in zip(edges, edges[1:])]
    ranges.append(f'[{edges[-1]:g}, {task.upper:g}]' if task.upper is not None else f'>= {edges[-1]:g}')
    return [f'{c}\n{r}' for c, r in zip(task.concepts, ranges)][:k]


def jitter(values, seed=0):
    """Sideways jitter for repeated values: uniform within +-0.3 of the smallest gap between distinct values
    (nothing when every value is distinct), so stacked points spread into a visible cloud."""
    unique = np.unique(values)
    if len(unique) == len(values):
        return values
    gap = np.diff(unique).min(initial=1.0)
    return values + np.random.default_rng(seed).uniform(-0.3, 0.3, len(values)) * gap


def plot_scatter(frame, path, level=None, task=None):
    """The scatter (true values jittered, the task's bin edges dotted), with the intervals of ``level`` (a
    column-name level such as '0.9') as error bars; returns the title."""
    y, p = frame['gt_value'].to_numpy(float), frame['pred_value'].to_numpy(float)
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=100)
    title = f'predicted vs true (MAE {np.abs(p - y).mean():.3f}, n={len(y)})'
    x = jitter(y)  # ordinal truths repeat: without jitter, dozens of points (or bars) hide behind each other
    if level is not None:
        low, high = frame[f'pred_low_{level}'].to_numpy(float), frame[f'pred_high_{level}'].to_numpy(float)
        miss = (y < low) | (y > high)
        for sel, colour, name in ((~miss, 'tab:blue', 'covers truth'), (miss, 'tab:red', 'misses truth')):
            if sel.any():
                ax.errorbar(x[sel], p[sel], yerr=np.stack([p[sel] - low[sel], high[sel] - p[sel]]).clip(0),
                            fmt='o', ms=2.5, lw=0.6, alpha=0.5, color=colour, label=f'{level} interval, {name}')
        cov, width = coverage_and_width(low, high, y)
        lo, hi = float(min(lo, low.min())), float(max(hi, high.max()))
        title += f'\n{level} interval: coverage {100 * cov:.1f}%, mean width {width:.3f}'
    else:
        ax.scatter(x, p, s=8, alpha=0.35, edgecolors='none', label='samples')
    if task is not None:  # the bins: edges dotted, each bin's concept at its centre on the right
        for edge in task.edges[1:]:
            ax.axhline(edge, color='grey', lw=0.6, ls=':')
            ax.axvline(edge, color='grey', lw=0.6, ls=':')
        tops = list(task.edges[1:]) + [task.upper if task.upper is not None else max(hi, task.edges[-1] + 1)]
        for bottom, top, concept in zip(task.edges, tops, task.concepts):
            ax.text(1.01, (bottom + top) / 2, concept, transform=ax.get_yaxis_transform(), fontsize=7,
                    va='center', ha='left', color='dimgrey')
    ax.plot([lo, hi], [lo, hi], 'r--', lw=1, label='y = x')
    xlabel = 'true value' + (' (jittered sideways)' if x is not y else '')
    ax.set(xlabel=xlabel, ylabel='predicted value', title=title)
    ax.legend(loc='upper left', fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return title


def plot_confusion(frame, path, task=None):
    """True bin against ``pred_label`` (the bin of the predicted value); the title adds the accuracy of the arg-max
    bin (``pred_bin_argmax``, what OrdinalMetric reports as accuracy) when the file has it."""
    gt, pred = frame['gt_label'].to_numpy(int), frame['pred_label'].to_numpy(int)
    known = (gt >= 0) & (pred >= 0)  # -1 marks a missing label in the dump
    title = f'true bin vs bin of the predicted value\n(accuracy {100 * np.mean(gt[known] == pred[known]):.1f}%'
    if 'pred_bin_argmax' in frame.columns:
        top = frame['pred_bin_argmax'].to_numpy(int)
        ok = (gt >= 0) & (top >= 0)
        title += f'; arg-max bin accuracy {100 * np.mean(gt[ok] == top[ok]):.1f}%'
    title += ')'
    gt, pred = gt[known], pred[known]
    k = int(max(gt.max(), pred.max()) + 1)
    score_cols = [c for c in frame.columns if c.startswith('pred_score_')]
    k = max(k, len(score_cols), task.num_bins if task is not None else 0)
    mat = confusion(gt, pred, k)
    names = bin_names(task, k)
    side = 1.1 * k + (3.0 if task is not None else 2.0)
    fig, ax = plt.subplots(figsize=(side, side - 0.5), dpi=100)
    im = ax.imshow(mat, cmap='Blues')
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(mat[i, j]), ha='center', va='center',
                    color='white' if mat[i, j] > mat.max() / 2 else 'black')
    ax.set(xticks=range(k), yticks=range(k), xlabel='predicted bin (of the predicted value)', ylabel='true bin',
           title=title)
    ax.set_xticklabels(names, fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_mae_per_bin(frame, path, task=None):
    gt = frame['gt_label'].to_numpy(int)
    err = np.abs(frame['pred_value'].to_numpy(float) - frame['gt_value'].to_numpy(float))
    bins, inverse = np.unique(gt, return_inverse=True)
    counts = np.bincount(inverse)
    mae = np.bincount(inverse, weights=err) / counts
    names = bin_names(task, int(bins.max()) + 1)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(bins) + 1), 4), dpi=100)
    bars = ax.bar([names[b] if b >= 0 else 'unknown' for b in bins], mae, color='tab:orange')
    for bar, n in zip(bars, counts):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f'n={n}', ha='center', va='bottom', fontsize=8)
    ax.set(xlabel='true bin', ylabel='MAE', title='MAE per true bin')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def task_of(args):
    """The OrdinalTask of ``--task`` or of ``--config``'s head (its top-level ``task`` applied), else None."""
    from numclip_mm.tasks import get_task
    if args.task:
        return get_task(args.task)
    if args.config:
        from numclip_mm.inference import load_config
        return get_task(load_config(args.config).model.head.task)
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description='Plot ordinal predictions (scatter, confusion, MAE per bin).')
    parser.add_argument('pred_file', help='CSV/Parquet written by DumpOrdinalPredictions (tools/test.py --out)')
    parser.add_argument('--out-dir', required=True, help='folder for the PNGs')
    which = parser.add_mutually_exclusive_group()
    which.add_argument('--config', help='the config the predictions came from: its task names the bins')
    which.add_argument('--task', help='the task name (e.g. count, age) that names the bins')
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
    task = task_of(args)
    if task is None:
        print('bins are numbered: give --config or --task to name them by concept and range', file=sys.stderr)
    os.makedirs(args.out_dir, exist_ok=True)
    paths = []
    for name, draw in (('scatter.png', lambda path: plot_scatter(frame, path, level, task)),
                       ('confusion.png', lambda path: plot_confusion(frame, path, task)),
                       ('mae_per_bin.png', lambda path: plot_mae_per_bin(frame, path, task))):
        path = osp.join(args.out_dir, name)
        draw(path)
        paths.append(path)
        print(path)
    return paths


if __name__ == '__main__':
    main()
