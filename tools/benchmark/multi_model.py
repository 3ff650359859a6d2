"""One pass, many models: three demo models scored in one ``numclip-score`` run (``--model`` three times: each image
read and decoded once) against three separate runs (one per model), on the same JPEG catalog.

Each run is the real command line in a child process; wall time is from process start to exit (Python and Ray
start-up included, as a user pays it), CPU time is summed over the whole process tree (the driver, the Ray daemons
and every Ray worker; scorer_throughput.TreeSampler). The one-pass outputs are checked against the separate runs'
(every model's columns equal within float tolerance, rows out == rows in).

    python tools/benchmark/multi_model.py [--num-images 2000] [--out docs/results/multi_model.json]

Checkpoints are seeded random weights of each config's model (speed does not depend on the weights).
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scorer_throughput import REPO, run_sampled, write_catalog  # a sibling script (tools/benchmark is on sys.path)

MODELS = (('numclip_', 'configs/numclip_demo.py'), ('ordinalclip_', 'configs/baselines/ordinalclip_demo.py'),
          ('regression_', 'configs/baselines/regression_demo.py'))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default='docs/results/multi_model.json')
    p.add_argument('--num-images', type=int, default=2000)
    p.add_argument('--num-files', type=int, default=4)
    p.add_argument('--min-size', type=int, default=256)
    p.add_argument('--max-size', type=int, default=640)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--num-cpus', type=int, default=2)
    p.add_argument('--workdir', default=None, help='where the catalog, checkpoints and outputs go (default: temp)')
    return p.parse_args()


def load() -> list:
    with open('/proc/loadavg') as f:
        return [float(v) for v in f.read().split()[:3]]


def checkpoint(config: str, folder: Path) -> str:
    import torch

    from numclip_mm.inference import Predictor
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    path = folder / 'model.pth'
    torch.save({'state_dict': Predictor(str(REPO / config)).model.state_dict()}, path)
    return str(path)


def score(args, model_args, out: Path) -> dict:
    summary = out.parent / f'{out.name}.summary.json'
    cmd = [sys.executable, '-m', 'numclip_mm.batch.score', *model_args, '--input', str(args.catalog), '--output',
           str(out), '--batch-size', str(args.batch_size), '--num-cpus', str(args.num_cpus), '--cpus-per-actor',
           str(args.num_cpus), '--torch-threads', str(args.num_cpus), '--overwrite', '--quiet',
           '--summary-json', str(summary)]
    load_before = load()
    code, _, _, wall, sampler = run_sampled(cmd)
    if code != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed ({code})')
    rows = json.loads(summary.read_text())['rows_scored']
    assert rows == args.num_images, rows
    cpu = sum(sampler.cpu.values())
    return dict(seconds=wall, cpu_s=cpu, images_per_s=rows / wall, cpu_s_per_1000=1000 * cpu / rows,
                processes=len(sampler.cpu), peak_rss_mb=sampler.peak_rss / 2 ** 20, load_before=load_before)


def compare(one: Path, separate: dict) -> float:
    """Largest difference between a one-pass column and the separate run's same column (values, probabilities);
    labels and errors must be identical."""
    worst = 0.0
    for f in sorted(one.glob('*.parquet')):
        both = pq.read_table(f)
        for prefix, folder in separate.items():
            alone = pq.read_table(folder / f.name)
            assert alone.num_rows == both.num_rows
            for suffix in ('label', 'error'):
                assert alone.column(prefix + suffix).equals(both.column(prefix + suffix)), (f, prefix, suffix)
            for suffix in ('value', 'probability'):
                a = np.asarray(alone.column(prefix + suffix).to_pylist(), float)
                b = np.asarray(both.column(prefix + suffix).to_pylist(), float)
                worst = max(worst, float(np.nanmax(np.abs(a - b))))
    return worst


def main():
    args = parse_args()
    os.environ.setdefault('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', '0')
    work = Path(args.workdir or tempfile.mkdtemp(prefix='multi-model-bench-'))
    args.catalog = work / 'catalog'
    size = write_catalog(args.catalog, 'jpeg', args.num_images, args.num_files, args.min_size, args.max_size)
    print(f'{args.num_images} JPEGs of {args.min_size}-{args.max_size} px, {size / 1e6:.1f} MB in {args.num_files} '
          f'files; load {load()}', flush=True)
    checkpoints = {prefix: checkpoint(config, work / prefix) for prefix, config in MODELS}
    separate, outputs = {}, {}
    for prefix, config in MODELS:
        outputs[prefix] = work / f'out-{prefix}'
        separate[prefix] = score(args, ['--config', config, '--checkpoint', checkpoints[prefix], '--prefix', prefix],
                                 outputs[prefix])
        print(f'  {prefix[:-1]} alone: {separate[prefix]["seconds"]:.1f} s wall, {separate[prefix]["cpu_s"]:.1f} '
              f'CPU s ({separate[prefix]["processes"]} processes)', flush=True)
    model_args = [a for prefix, config in MODELS for a in ('--model', config, checkpoints[prefix], prefix)]
    one = score(args, model_args, work / 'out-one-pass')
    print(f'  three models, one pass: {one["seconds"]:.1f} s wall, {one["cpu_s"]:.1f} CPU s', flush=True)
    worst = compare(work / 'out-one-pass', outputs)
    total_wall = sum(r['seconds'] for r in separate.values())
    total_cpu = sum(r['cpu_s'] for r in separate.values())
    results = dict(
        date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), command=' '.join(['python', *sys.argv]),
        machine=dict(cpus=os.cpu_count(), load_at_end=load()), images=args.num_images, catalog_bytes=size,
        image_sizes=[args.min_size, args.max_size], batch_size=args.batch_size, num_cpus=args.num_cpus,
        models=[dict(prefix=p, config=c) for p, c in MODELS], separate_runs=separate,
        separate_total=dict(seconds=total_wall, cpu_s=total_cpu), one_pass=one,
        one_pass_vs_separate=dict(wall=one['seconds'] / total_wall, cpu=one['cpu_s'] / total_cpu),
        max_abs_difference_vs_separate=worst)
    print(f'three separate runs: {total_wall:.1f} s wall, {total_cpu:.1f} CPU s; one pass: {one["seconds"]:.1f} s '
          f'({100 * one["seconds"] / total_wall:.0f} %), {one["cpu_s"]:.1f} CPU s '
          f'({100 * one["cpu_s"] / total_cpu:.0f} %); one-pass predictions equal the separate runs\' '
          f'within {worst:.2g}')
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
