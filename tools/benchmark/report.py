"""Train and evaluate NumCLIP, its baselines and its ablations on the embedded demo set; write Markdown tables.

Every trained config gets the same budget (epochs, training samples, batch size) and the same seeds; each run is
`tools/train.py` then `tools/test.py --out` on the test split, with the arguments a user gives them (no validation
and no model selection: the last checkpoint is tested, so nothing is tuned on the test split). The tools run inside
``--jobs`` long-lived worker processes (``runpy``), so that the imports (tens of seconds on a busy machine) are
paid once per worker, not twice per run; each run's output goes to its `train.log`/`test.log`. Two starting points
(``--inits``): the packaged pretrained tiny CLIP (``numclip-tiny-synth``, the configs' default) and random
initialisation (``model.clip.pretrained=None``); the difference between the two tables is the finding.

Few-shot (docs/method.md §11, ``--shots``): ``num_shots`` training images per count (2 per bin on the demo's
5 bins of 2 counts), each run trained for a fixed number of iterations (``--few-shot-iters``) whatever its size.

The output folder holds `results.md` (mean +- std over seeds of MAE, accuracy, off-by-one, and the goal checks),
`results.json` (every run), the runs' prediction files and the plots of NumCLIP's first seed. A run whose
`metrics.json` exists is reused, so an interrupted report resumes. configs/README.md's demo results and
docs/results/ are this file's output.

    nice python tools/benchmark/report.py --seeds 0 1 2 --epochs 30 --jobs 2
"""
import argparse
import contextlib
import json
import math
import multiprocessing
import os
import os.path as osp
import runpy
import shlex
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
METHODS = {
    'NumCLIP': 'configs/numclip_demo.py',
    'zero-shot CLIP': 'configs/baselines/zeroshot_clip_demo.py',
    'CoOp': 'configs/baselines/coop_demo.py',
    'OrdinalCLIP': 'configs/baselines/ordinalclip_demo.py',
    'plain regression': 'configs/baselines/regression_demo.py',
}
ABLATIONS = {
    'NumCLIP (all)': 'configs/numclip_demo.py',
    'FCRC off (plain CE + KL)': 'configs/ablations/no_fcrc_demo.py',
    'numbers instead of concepts': 'configs/ablations/numbers_as_concepts_demo.py',
    'regressor off (expectation)': 'configs/ablations/no_regressor_demo.py',
    'adapter off': 'configs/ablations/no_adapter_demo.py',
}
INITS = {'pretrained': ('pretrained tiny CLIP (numclip-tiny-synth)', []),
         'randinit': ('random-initialised tiny CLIP', ['model.clip.pretrained=None'])}
COLUMNS = (('mae', 'MAE', '{:.3f}'), ('accuracy', 'accuracy %', '{:.1f}'), ('off_by_one', 'off-by-one %', '{:.1f}'))
BATCH_SIZE = 32  # configs/_base_/datasets/demo.py


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out-dir', default='work_dirs/report')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--epochs', type=int, default=30, help='training epochs of every full-data run')
    parser.add_argument('--train-samples', type=int, default=1000)
    parser.add_argument('--inits', nargs='+', choices=sorted(INITS), default=['pretrained', 'randinit'])
    parser.add_argument('--shots', type=int, nargs='*', default=[1, 2, 4, 8, 16],
                        help='few-shot runs: training images per count (none: no few-shot table)')
    parser.add_argument('--few-shot-inits', nargs='*', choices=sorted(INITS), default=['pretrained'])
    parser.add_argument('--few-shot-methods', nargs='+', default=['NumCLIP', 'CoOp', 'OrdinalCLIP', 'plain regression'],
                        help='rows of the few-shot table (names as in the methods/ablations tables)')
    parser.add_argument('--few-shot-iters', type=int, default=100, help='training iterations of every few-shot run')
    parser.add_argument('--jobs', type=int, default=1, help='runs in parallel (each gets cores/jobs threads)')
    parser.add_argument('--only', nargs='+', help='restrict the full-data tables to these rows (names as printed)')
    parser.add_argument('--randinit-only', nargs='+',
                        help='restrict the random-init full-data tables further to these rows (default: as --only)')
    return parser.parse_args(argv)


def init_worker(threads):
    """A worker process: the tools' folder importable (they import ``common``), ``threads`` torch threads."""
    os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    import torch
    os.chdir(ROOT)
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    torch.set_num_threads(threads)


def run(cmd, log_path):
    """Run ``tools/<script>.py`` with its arguments in this process, as ``python tools/<script>.py ...`` would."""
    script, argv = cmd[0], [str(a) for a in cmd[1:]]
    old_argv = sys.argv
    with open(log_path, 'w') as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        sys.argv = [script, *argv]
        try:
            runpy.run_path(osp.join(ROOT, script), run_name='__main__')
        except SystemExit as err:
            if err.code not in (None, 0):
                raise RuntimeError(f'{script} {" ".join(argv)} failed, see {log_path}') from None
        finally:
            sys.argv = old_argv


def few_shot_epochs(shots: int, iters: int, num_counts: int = 10) -> int:
    """Epochs giving about ``iters`` iterations on ``shots`` images per count (batch 32, last batch kept)."""
    return max(1, round(iters / math.ceil(shots * num_counts / BATCH_SIZE)))


def train_and_test(job, args):
    """One run (config, seed, init, shots): returns the test metrics (dict), the prediction file and seconds."""
    config, seed, init, shots = job
    name = osp.splitext(osp.basename(config))[0]
    work = osp.join(args.out_dir, 'runs', f'{name}_{init}_{f"{shots}shot" if shots else "full"}_seed{seed}')
    done_file = osp.join(work, 'metrics.json')
    if osp.isfile(done_file):
        with open(done_file) as f:
            return dict(json.load(f), reused=True)  # 'reused' is not written back: the file keeps the run's facts
    os.makedirs(work, exist_ok=True)
    t0 = time.time()
    epochs = few_shot_epochs(shots, args.few_shot_iters) if shots else args.epochs
    init_options = INITS[init][1]
    options = [*init_options, f'randomness.seed={seed}', f'train_cfg.max_epochs={epochs}',
               f'param_scheduler.milestones=[{max(1, int(epochs * 0.8))}]',
               f'default_hooks.checkpoint.interval={epochs}',
               'default_hooks.checkpoint.save_best=None', f'train_dataloader.dataset.num_samples={args.train_samples}']
    if shots:
        options.append(f'train_dataloader.dataset.num_shots={shots}')
    checkpoint = []
    if 'zeroshot' not in name:  # zero-shot CLIP is evaluated as built
        run(['tools/train.py', config, '--work-dir', work, '--no-validate', '--cfg-options', *options],
            osp.join(work, 'train.log'))
        checkpoint = [osp.join(work, f'epoch_{epochs}.pth')]
    preds = osp.join(work, 'predictions.csv')
    run(['tools/test.py', config, *checkpoint, '--work-dir', work, '--out', preds,
         '--cfg-options', *init_options, f'randomness.seed={seed}'], osp.join(work, 'test.log'))
    result = dict(config=config, seed=seed, init=init, shots=shots, epochs=epochs if checkpoint else 0,
                  metrics=metrics_of(config, preds), predictions=preds, seconds=round(time.time() - t0, 1))
    for ckpt in checkpoint:  # keep the folder small: predictions and logs are what the report reads
        os.remove(ckpt)
    with open(done_file, 'w') as f:
        json.dump(result, f, indent=1)
    return result


def metrics_of(config, predictions):
    """The config's own test evaluator (e.g. ``task='count'`` for OrdinalCLIP) applied to the prediction file, so
    one test run gives both the per-sample predictions and the metrics."""
    from mmengine.config import Config

    import numclip_mm.register  # noqa: F401  (registry; also makes torchvision importable first)
    from numclip_mm.evaluation import OrdinalMetric, load_predictions
    evaluator = dict(Config.fromfile(osp.join(ROOT, config)).test_evaluator)
    if evaluator.pop('type') != 'OrdinalMetric':
        raise ValueError(f'{config}: the report needs an OrdinalMetric test evaluator')
    frame = load_predictions(predictions)
    return {k: float(v) for k, v in OrdinalMetric(**evaluator).calculate(*(frame[k].to_numpy() for k in (
        'pred_value', 'gt_value', 'pred_bin_argmax', 'gt_label'))).items()}  # accuracy: the arg-max bin


def mean_std(runs, key):
    values = np.array([r['metrics'][key] for r in runs], dtype=float)
    return values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0


def table(title, rows, results):
    """``results``: row name -> list of runs (one per seed); no table when none of ``rows`` ran."""
    if not any(results.get(row) for row in rows):
        return []
    lines = [f'#### {title}', '', '| method | ' + ' | '.join(c[1] for c in COLUMNS) + ' |',
             '|---|' + '---:|' * len(COLUMNS)]
    for row in rows:
        runs = results.get(row)
        if not runs:
            continue
        cells = [f'{fmt.format(m)} ± {fmt.format(s)}' for (m, s), (_, _, fmt) in
                 zip((mean_std(runs, key) for key, _, _ in COLUMNS), COLUMNS)]
        lines.append(f'| {row} | ' + ' | '.join(cells) + ' |')
    return lines + ['']


def few_shot_table(title, methods, shots, results):
    """``results``: (method, shots) -> runs. MAE mean ± std per method and shot count."""
    lines = [f'#### {title}', '', '| method | ' + ' | '.join(f'{s} shot{"s" * (s > 1)}' for s in shots) + ' |',
             '|---|' + '---:|' * len(shots)]
    for method in methods:
        cells = []
        for s in shots:
            runs = results.get((method, s))
            cells.append('{:.3f} ± {:.3f}'.format(*mean_std(runs, 'mae')) if runs else 'not run')
        lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
    return lines + ['']


def goal_checks(results):
    """The issue's two claims, checked on mean MAE: NumCLIP beats every trained baseline by >= 10 % relative MAE;
    numbers instead of concepts is worse than concepts."""
    checks = {}
    numclip = results.get('NumCLIP')
    if numclip:
        ours = mean_std(numclip, 'mae')[0]
        for row in ('CoOp', 'OrdinalCLIP', 'plain regression', 'zero-shot CLIP'):
            if results.get(row):
                theirs = mean_std(results[row], 'mae')[0]
                checks[f'NumCLIP vs {row}'] = dict(relative_mae_gain=(theirs - ours) / theirs,
                                                   met=bool((theirs - ours) / theirs >= 0.10))
    if numclip and results.get('numbers instead of concepts'):
        numbers = mean_std(results['numbers instead of concepts'], 'mae')[0]
        checks['concepts beat numbers'] = dict(relative_mae_gain=(numbers - mean_std(numclip, 'mae')[0]) / numbers,
                                               met=bool(numbers > mean_std(numclip, 'mae')[0]))
    return checks


def check_lines(checks):
    return [f'- {name}: relative MAE gain {c["relative_mae_gain"] * 100:+.1f} % '
            f'({"met" if c["met"] else "NOT met"}{", goal >= 10 %" if name.startswith("NumCLIP vs") else ""})'
            for name, c in checks.items()] + ['']


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    rows = {**METHODS, **ABLATIONS}
    if args.only:
        rows = {k: v for k, v in rows.items() if k in args.only}
    unknown = set(args.few_shot_methods) - set(METHODS) - set(ABLATIONS)
    if unknown:
        raise SystemExit(f'unknown --few-shot-methods {sorted(unknown)}; known: {sorted({**METHODS, **ABLATIONS})}')
    few_shot_rows = {m: {**METHODS, **ABLATIONS}[m] for m in args.few_shot_methods if 'zeroshot' not in
                     {**METHODS, **ABLATIONS}[m]}
    configs = sorted(set(rows.values()), key=list(dict.fromkeys(rows.values())).index)
    # most important first: the pretrained full-data tables, then random init, then few-shot
    rows_of = {init: {k: v for k, v in rows.items() if init != 'randinit' or not args.randinit_only
                      or k in args.randinit_only} for init in args.inits}
    jobs = [(c, s, init, 0) for init in args.inits for c in configs if c in rows_of[init].values() for s in args.seeds]
    jobs += [(c, s, init, k) for init in args.few_shot_inits for k in args.shots for c in
             dict.fromkeys(few_shot_rows.values()) for s in args.seeds]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    start = time.time()
    done = {}

    context = multiprocessing.get_context('spawn')  # fresh interpreters: no state inherited from this one
    with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(train_and_test, job, args): job for job in jobs}
        for future in as_completed(futures):
            job, result = futures[future], future.result()
            done[job] = result
            print(f'[{len(done)}/{len(jobs)}] {job[0]} {job[2]} {f"{job[3]} shots" if job[3] else "full"} seed '
                  f'{job[1]}: MAE {result["metrics"]["mae"]:.3f} acc {result["metrics"]["accuracy"]:.1f} '
                  f'({result["seconds"]:.0f} s; {time.time() - start:.0f} s elapsed)', flush=True)

    lines = ['## Results on the embedded demo', '',
             f'Embedded demo set (generated images of 0-9 objects, 5 bins), tiny CLIP (`numclip-demo`: 4-layer ViT, '
             f'64 px). Full data: {args.epochs} epochs on {args.train_samples} images; '
             + (f'few-shot: {args.few_shot_iters} iterations (batch {BATCH_SIZE}) on N images per count; '
                if args.shots else '') +
             f'the last checkpoint is tested on the test split '
             f'of 200 images (no validation, no model selection); seeds {args.seeds}; mean ± sample std over seeds. '
             f'Accuracy is the bin accuracy. A small model on generated data, not the paper\'s setting (CLIP ViT-B/16 '
             f'on MORPH II / HCI / aesthetics): docs/pretrained_tiny_clip.md says what it can and cannot tell.', '']
    summary = {}
    for init in args.inits:
        results = {row: [done[(cfg, s, init, 0)] for s in args.seeds] for row, cfg in rows_of[init].items()}
        checks = goal_checks(results)
        summary[init] = checks
        lines += [f'### Starting from the {INITS[init][0]}', '',
                  *table('NumCLIP and baselines', [r for r in METHODS if r in rows_of[init]], results),
                  *table('Ablations', [r for r in ABLATIONS if r in rows_of[init]], results),
                  'Goal checks (mean MAE):', '', *check_lines(checks)]
    for init in args.few_shot_inits:
        if not args.shots:
            continue
        results = {(m, k): [done[(cfg, s, init, k)] for s in args.seeds] for m, cfg in few_shot_rows.items()
                   for k in args.shots}
        lines += few_shot_table(f'Few-shot MAE, starting from the {INITS[init][0]} (N images per count)',
                                list(few_shot_rows), args.shots, results)
    command = shlex.join(['python', 'tools/benchmark/report.py', *(sys.argv[1:] if argv is None else argv)])
    reused = sum(bool(r.get('reused')) for r in done.values())
    lines.append(f'Produced by `{command}` in {time.time() - start:.0f} s on {time.strftime("%Y-%m-%d")} '
                 f'({os.cpu_count()} CPU cores)' + (f'; {reused} of the {len(done)} runs were reused from earlier '
                                                    f'invocations with the same --out-dir (their own seconds are in '
                                                    f'results.json).' if reused else '.'))
    first = done.get(('configs/numclip_demo.py', args.seeds[0], args.inits[0], 0))
    if first:
        subprocess.run([sys.executable, 'tools/analysis/plot_predictions.py', first['predictions'], '--out-dir',
                        osp.join(args.out_dir, 'plots')], cwd=ROOT, check=True)
    with open(osp.join(args.out_dir, 'results.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(osp.join(args.out_dir, 'results.json'), 'w') as f:
        json.dump(dict(args=vars(args), goal_checks=summary, runs=list(done.values())), f, indent=1)
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
