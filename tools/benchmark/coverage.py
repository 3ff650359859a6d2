"""Coverage and width of the conformal prediction intervals on the embedded demo set, over seeds and methods.

For each seed: `tools/train.py` (skipped when the checkpoint exists), then `tools/test.py --out` on the val split
(the calibration set) and on the test split; every interval method (docs/intervals.md) is calibrated on val and
scored on test at each level, and again averaged over random re-splits of the pooled val + test predictions (the
demo's val/test images are the same for every model seed, so the fixed split is one draw of the calibration set).
Widths are also compared at exactly equal test coverage. Then the same calibrations under label shift (the project's
label-shift sampler,
numclip_mm/datasets/sampling.py, applied to the test set or to the calibration set), and the coverage per true
value (conformal coverage is marginal, not per value). Prints a Markdown table and writes everything as JSON.

    python tools/benchmark/coverage.py --seeds 0 1 2 --epochs 30 --work-dir work_dirs/coverage
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pandas as pd

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
from numclip_mm.conformal import (  # noqa: E402
    DEFAULT_METHOD,
    METHODS,
    coverage_and_width,
    fit_calibration,
    interval_bounds,
    nonconformity,
    score_columns,
)
from numclip_mm.datasets.sampling import label_shift_indices  # noqa: E402
from numclip_mm.evaluation.dump import load_predictions  # noqa: E402
from numclip_mm.tasks import get_task  # noqa: E402

CONFIG = 'configs/numclip_demo.py'
SHIFTS = ({'num_topk': 3, 'ratio': 0.1}, {'num_topk': 5, 'ratio': 0.1})


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--epochs', type=int, default=30, help='training epochs (the demo schedule has 30)')
    parser.add_argument('--levels', type=float, nargs='+', default=[0.8, 0.9])
    parser.add_argument('--num-samples', type=int, default=1000, help='size of the val (calibration) and test sets')
    parser.add_argument('--work-dir', default='work_dirs/coverage')
    parser.add_argument('--resplits', type=int, default=200, help='random val/test re-splits per seed')
    parser.add_argument('--out', help='JSON file (default <work-dir>/coverage.json)')
    return parser.parse_args(argv)


def run(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f'{args} failed:\n{proc.stderr[-3000:]}')


def predictions(work: str, seed: int, epochs: int, num_samples: int):
    """(val frame, test frame) of one seed's model, training it first if needed."""
    ckpt = osp.join(work, f'epoch_{epochs}.pth')
    if not osp.isfile(ckpt):
        print(f'seed {seed}: training {epochs} epochs -> {work}', flush=True)
        milestones = f'param_scheduler.milestones=[{max(1, round(epochs * 0.8))}]'
        run('tools/train.py', CONFIG, '--work-dir', work, '--cfg-options', f'randomness.seed={seed}',
            f'train_cfg.max_epochs={epochs}', f'train_cfg.val_interval={epochs}', milestones)
    frames = []
    for split in ('val', 'test'):
        out = osp.join(work, f'{split}_{num_samples}.parquet')
        if not osp.isfile(out):
            run('tools/test.py', CONFIG, ckpt, '--work-dir', osp.join(work, 'test'), '--out', out, '--cfg-options',
                f'test_dataloader.dataset.split={split}', f'test_dataloader.dataset.num_samples={num_samples}')
        frames.append(load_predictions(out))
    return frames


def arrays(frame):
    return (frame['pred_value'].to_numpy(float), frame[score_columns(frame)].to_numpy(float),
            frame['gt_value'].to_numpy(float))


def score(calibration, frame, keep=None):
    """{method: {level: (coverage %, mean width)}} of a calibration on (a subset of) a prediction frame."""
    p, probs, y = arrays(frame)
    if keep is not None:
        p, probs, y = p[keep], probs[keep], y[keep]
    out = {}
    for method in METHODS:
        out[method] = {}
        for key, (low, high) in calibration.intervals(p, probs, method=method).items():
            cov, width = coverage_and_width(low, high, y)
            out[method][key] = (100 * cov, width)
    return out


def width_at_exact_coverage(calibration, frame):
    """{method: {level: mean width}} when each method's threshold is the test set's own ``level``-quantile of its
    scores: every method then covers the same share of the test set, so widths compare at equal coverage without
    the calibration set's sampling noise (an oracle for comparison only, not an interval one can use)."""
    p, probs, y = arrays(frame)
    out = {}
    for method in METHODS:
        out[method] = {}
        for level in calibration.levels:
            scores = nonconformity(method, p, probs, y, calibration.anchors, level, calibration.scale_floor)
            q = float(np.quantile(scores, level, method='higher'))
            low, high = interval_bounds(method, q, p, probs, calibration.anchors, calibration.value_range, level,
                                        calibration.scale_floor)
            out[method][f'{level:g}'] = float((high - low).mean())
    return out


def resplit_scores(val, test, task, levels, rounds, seed):
    """Mean {method: {level: (coverage %, width)}} over random re-splits of the pooled val + test predictions into
    a calibration and a test half of the original sizes. The demo's val and test images are the same for every
    model seed, so the fixed split measures one draw of the calibration set; the guarantee is an average over such
    draws, which the re-splits estimate."""
    pooled = pd.concat([val, test], ignore_index=True)
    p, probs, y = arrays(pooled)
    rng = np.random.default_rng(seed)
    acc = {m: {f'{v:g}': [] for v in levels} for m in METHODS}
    for _ in range(rounds):
        perm = rng.permutation(len(pooled))
        cal_i, test_i = perm[:len(val)], perm[len(val):]
        cal = fit_calibration(p[cal_i], probs[cal_i], y[cal_i], task, levels)
        for method in METHODS:
            for key, (low, high) in cal.intervals(p[test_i], probs[test_i], method=method).items():
                cov, width = coverage_and_width(low, high, y[test_i])
                acc[method][key].append((100 * cov, width))
    return {m: {k: tuple(np.mean(v, axis=0).tolist()) for k, v in t.items()} for m, t in acc.items()}


def per_value_coverage(calibration, frame, level):
    p, probs, y = arrays(frame)
    low, high = calibration.intervals(p, probs, [level])[f'{level:g}']
    hit = ((y >= low) & (y <= high)).astype(float)
    values, inverse = np.unique(y, return_inverse=True)
    return {f'{v:g}': 100 * float(c) for v, c in zip(values, np.bincount(inverse, hit) / np.bincount(inverse))}


def mean_std(xs):
    return float(np.mean(xs)), float(np.std(xs))


def main(argv=None):
    args = parse_args(argv)
    task = get_task('count')
    runs = []
    for seed in args.seeds:
        work = osp.join(args.work_dir, f'seed{seed}')
        val, test = predictions(work, seed, args.epochs, args.num_samples)
        cal = fit_calibration(*arrays(val), task, args.levels, source=dict(split='val', seed=seed))
        result = dict(seed=seed, n_cal=len(val), n_test=len(test), mae=float(np.abs(arrays(test)[0] -
                                                                                    arrays(test)[2]).mean()),
                      exchangeable=score(cal, test), shifted_test={}, shifted_calibration={},
                      resplits=resplit_scores(val, test, task, args.levels, args.resplits, seed),
                      width_at_exact_coverage=width_at_exact_coverage(cal, test),
                      per_value_coverage={m: per_value_coverage(
                          fit_calibration(*arrays(val), task, args.levels, method=m), test, max(args.levels))
                          for m in METHODS})
        for shift in SHIFTS:
            name = f"top{shift['num_topk']}x{shift['ratio']:g}"
            keep = label_shift_indices(arrays(test)[2], seed=seed, **shift)
            result['shifted_test'][name] = score(cal, test, keep)
            kept_val = val.iloc[label_shift_indices(arrays(val)[2], seed=seed, **shift)]
            result['shifted_calibration'][name] = score(fit_calibration(*arrays(kept_val), task, args.levels), test)
        runs.append(result)
        print(f'seed {seed}: test MAE {result["mae"]:.3f}, ' + ', '.join(
            f'{m}@{k} {c:.1f}%/{w:.3f}' for m, t in result['exchangeable'].items() for k, (c, w) in t.items()),
            flush=True)

    keys = [f'{v:g}' for v in args.levels]
    summary = {}
    for setting in ('exchangeable', 'resplits', 'shifted_test', 'shifted_calibration'):
        names = [None] if setting in ('exchangeable', 'resplits') else list(runs[0][setting])
        for name in names:
            label = setting if name is None else f'{setting} {name}'
            summary[label] = {m: {k: dict(zip(('coverage', 'coverage_std'), mean_std(
                [(r[setting] if name is None else r[setting][name])[m][k][0] for r in runs])), **dict(zip(
                    ('width', 'width_std'), mean_std([(r[setting] if name is None else r[setting][name])[m][k][1]
                                                      for r in runs])))) for k in keys} for m in METHODS}
    lines = [f'Conformal intervals on the demo test set ({len(runs)} seeds, {args.epochs} epochs, '
             f'{args.num_samples} calibration (val) and {args.num_samples} test samples); coverage % / mean width, '
             'mean +- std over seeds; default method ' + DEFAULT_METHOD, '',
             '| setting | method | ' + ' | '.join(f'coverage @{k} | width @{k}' for k in keys) + ' |',
             '|---|---|' + '---:|---:|' * len(keys)]
    for label, table in summary.items():
        for m, row in table.items():
            lines.append(f'| {label} | {m} | ' + ' | '.join(
                f"{row[k]['coverage']:.1f} +- {row[k]['coverage_std']:.1f} | {row[k]['width']:.3f} +- "
                f"{row[k]['width_std']:.3f}" for k in keys) + ' |')
    exact = {m: {k: mean_std([r['width_at_exact_coverage'][m][k] for r in runs]) for k in keys} for m in METHODS}
    lines += ['', 'mean width at exactly equal test coverage (oracle threshold on the test set, for comparison only):']
    lines += [f'  {m}: ' + ', '.join(f'@{k} {w:.3f} +- {sd:.3f}' for k, (w, sd) in exact[m].items())
              for m in METHODS]
    per_value = {m: {v: float(np.mean([r['per_value_coverage'][m][v] for r in runs]))
                     for v in runs[0]['per_value_coverage'][m]} for m in METHODS}
    lines += ['', f'coverage % @{keys[-1]} per true value (mean over seeds):']
    lines += [f'  {m}: ' + ' '.join(f'{v}:{c:.0f}' for v, c in per_value[m].items()) for m in METHODS]
    print('\n'.join(lines))
    out = args.out or osp.join(args.work_dir, 'coverage.json')
    os.makedirs(osp.dirname(out) or '.', exist_ok=True)
    with open(out, 'w') as f:
        json.dump(dict(config=CONFIG, epochs=args.epochs, levels=args.levels, num_samples=args.num_samples,
                       default_method=DEFAULT_METHOD, shifts=list(SHIFTS), summary=summary,
                       width_at_exact_coverage=exact,
                       per_value_coverage=per_value, runs=runs, table='\n'.join(lines)), f, indent=1)
    print(out)
    return out


if __name__ == '__main__':
    main()
