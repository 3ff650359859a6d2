"""Train and evaluate NumCLIP, its baselines and its ablations on the embedded demo set; write a Markdown table.

Every config gets the same budget (epochs, training samples, batch size) and the same seeds; each run is
`tools/train.py` then `tools/test.py --out` on the test split, exactly as a user runs them. The output folder holds
`results.md` (mean +- std over seeds of MAE, accuracy, off-by-one), `results.json` (every run), the prediction
files and the plots of NumCLIP's first seed. configs/README.md's demo results are this file's `results.md`.

    python tools/benchmark/report.py --seeds 0 1 2 --epochs 30 --jobs 2
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

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
COLUMNS = (('mae', 'MAE', '{:.3f}'), ('accuracy', 'accuracy %', '{:.1f}'), ('off_by_one', 'off-by-one %', '{:.1f}'))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out-dir', default='work_dirs/report')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--epochs', type=int, default=30, help='training epochs for every trained config')
    parser.add_argument('--train-samples', type=int, default=1000)
    parser.add_argument('--jobs', type=int, default=1, help='runs in parallel (each gets cores/jobs threads)')
    parser.add_argument('--only', nargs='+', help='restrict to these table rows (names as printed)')
    return parser.parse_args()


def run(cmd, log_path, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=ROOT)
    with open(log_path, 'w') as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed, see {log_path}')


def train_and_test(config, seed, args, threads):
    """One run: returns the test metrics (dict) and the prediction file."""
    name = osp.splitext(osp.basename(config))[0]
    work = osp.join(args.out_dir, 'runs', f'{name}_seed{seed}')
    os.makedirs(work, exist_ok=True)
    milestone = max(1, int(args.epochs * 0.8))
    options = [f'randomness.seed={seed}', f'train_cfg.max_epochs={args.epochs}', f'train_cfg.val_interval={args.epochs}',
               f'param_scheduler.milestones=[{milestone}]', f'train_dataloader.dataset.num_samples={args.train_samples}']
    checkpoint = []
    if 'zeroshot' not in name:  # zero-shot CLIP is evaluated as built
        run([sys.executable, 'tools/train.py', config, '--work-dir', work, '--cfg-options', *options],
            osp.join(work, 'train.log'), threads)
        checkpoint = [osp.join(work, f'epoch_{args.epochs}.pth')]
    preds = osp.join(work, 'predictions.csv')
    run([sys.executable, 'tools/test.py', config, *checkpoint, '--work-dir', work, '--out', preds,
         '--cfg-options', f'randomness.seed={seed}'], osp.join(work, 'test.log'), threads)
    return metrics_of(config, preds), preds


def metrics_of(config, predictions):
    """The config's own test evaluator (e.g. ``task='count'`` for OrdinalCLIP) applied to the prediction file, so
    one test run gives both the per-sample predictions and the metrics."""
    import numclip_mm.register  # noqa: F401  (registry; also makes torchvision importable first)
    from mmengine.config import Config
    from numclip_mm.evaluation import OrdinalMetric, load_predictions
    evaluator = dict(Config.fromfile(osp.join(ROOT, config)).test_evaluator)
    if evaluator.pop('type') != 'OrdinalMetric':
        raise ValueError(f'{config}: the report needs an OrdinalMetric test evaluator')
    frame = load_predictions(predictions)
    return OrdinalMetric(**evaluator).calculate(*(frame[k].to_numpy() for k in (
        'pred_value', 'gt_value', 'pred_label', 'gt_label')))


def table(title, rows, results):
    lines = [f'### {title}', '', '| method | ' + ' | '.join(c[1] for c in COLUMNS) + ' |',
             '|---|' + '---:|' * len(COLUMNS)]
    for row in rows:
        runs = results.get(row)
        if not runs:
            continue
        cells = []
        for key, _, fmt in COLUMNS:
            values = np.array([r['metrics'][key] for r in runs], dtype=float)
            cells.append(f'{fmt.format(values.mean())} ± {fmt.format(values.std(ddof=1) if len(values) > 1 else 0)}')
        lines.append(f'| {row} | ' + ' | '.join(cells) + ' |')
    return lines + ['']


def main():
    args = parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    rows = {**METHODS, **ABLATIONS}
    if args.only:
        rows = {k: v for k, v in rows.items() if k in args.only}
    configs = sorted(set(rows.values()))
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    jobs = [(c, s) for c in configs for s in args.seeds]
    start = time.time()
    done = {}

    def work(job):
        config, seed = job
        t0 = time.time()
        metrics, preds = train_and_test(config, seed, args, threads)
        print(f'[{len(done) + 1}/{len(jobs)}] {config} seed {seed}: MAE {metrics["mae"]:.3f} '
              f'acc {metrics["accuracy"]:.1f} ({time.time() - t0:.0f} s)', flush=True)
        done[job] = dict(config=config, seed=seed, metrics=metrics, predictions=preds)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(work, jobs))
    results = {row: [done[(cfg, s)] for s in args.seeds] for row, cfg in rows.items()}

    numclip_preds = results.get('NumCLIP', [{}])[0].get('predictions')
    if numclip_preds:
        subprocess.run([sys.executable, 'tools/analysis/plot_predictions.py', numclip_preds, '--out-dir',
                        osp.join(args.out_dir, 'plots')], cwd=ROOT, check=True)
    setting = (f'Embedded demo set (generated images of 0-9 objects, 5 bins), tiny CLIP (4-layer ViT, 64 px) trained '
               f'from scratch: {args.epochs} epochs on {args.train_samples} images, test split of 200 images, seeds '
               f'{args.seeds}; mean ± sample std over seeds. Accuracy is the bin accuracy. This is a small model '
               f'on generated data, not the paper\'s setting (CLIP ViT-B/16 on MORPH II / HCI / aesthetics).')
    lines = ['## Results on the embedded demo', '', setting, '',
             *table('NumCLIP and baselines', METHODS, results), *table('Ablations', ABLATIONS, results),
             f'Produced by `python tools/benchmark/report.py --seeds {" ".join(map(str, args.seeds))} --epochs '
             f'{args.epochs} --train-samples {args.train_samples} --jobs {args.jobs}` in {time.time() - start:.0f} s.']
    with open(osp.join(args.out_dir, 'results.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(osp.join(args.out_dir, 'results.json'), 'w') as f:
        json.dump(dict(args=vars(args), runs=list(done.values())), f, indent=1)
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
