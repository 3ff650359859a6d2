"""Seconds per training iteration of NumCLIP through MMEngine's Runner vs. a bare PyTorch loop.

Both run the same model (same config, same seed) on the same batches with the same optimiser: the bare loop
pre-collates the batches the Runner's dataloader yields and does ``data_preprocessor -> loss -> backward -> step``.
The Runner's time is taken per iteration by a hook (``before_train_iter`` -> ``after_train_iter``), and also from
one ``after_train_iter`` to the next (which includes the data pipeline and every hook). Reported: medians over the
iterations of each repeat, the median over repeats, and the ratio.

    python tools/benchmark/train_overhead.py --iters 30 --repeats 3
"""
import argparse
import json
import os
import os.path as osp
import statistics
import tempfile
import time

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import numclip_mm.register  # noqa: F401  (registration; also makes torchvision importable first)


class IterTimes(Hook):
    """Records the duration of each train step and the time between consecutive step ends."""
    priority = 'VERY_LOW'

    def __init__(self):
        self.step, self.cycle = [], []
        self._begin = self._last_end = None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self._begin = time.perf_counter()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        now = time.perf_counter()
        self.step.append(now - self._begin)
        if self._last_end is not None:
            self.cycle.append(now - self._last_end)
        self._last_end = now


def build_cfg(args, work_dir):
    cfg = Config.fromfile(args.config)
    cfg.work_dir = work_dir
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=args.iters + args.warmup, val_interval=10 ** 9)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=10 ** 9, save_last=False)
    cfg.train_dataloader.persistent_workers = False
    cfg.train_dataloader.dataset.num_samples = args.batch_size * (args.iters + args.warmup)
    cfg.train_dataloader.batch_size = args.batch_size
    cfg.randomness = dict(seed=0)
    cfg.log_level = 'WARNING'
    return cfg


def runner_times(args):
    with tempfile.TemporaryDirectory() as work_dir:
        runner = Runner.from_cfg(build_cfg(args, work_dir))
        hook = IterTimes()
        runner.register_hook(hook)
        runner.train()
    w = args.warmup
    return statistics.median(hook.step[w:]), statistics.median(hook.cycle[w:])


def bare_times(args):
    """Same model, optimiser and batches, no Runner."""
    with tempfile.TemporaryDirectory() as work_dir:
        runner = Runner.from_cfg(build_cfg(args, work_dir))  # only to build the same model/optimiser/dataloader
        model = runner.model
        batches = list(runner.build_dataloader(runner._train_dataloader))
        optimizer = runner.build_optim_wrapper(runner.optim_wrapper).optimizer
    model.train()
    times = []
    for batch in batches:
        start = time.perf_counter()
        data = model.data_preprocessor(batch, True)
        losses = model(**data, mode='loss')
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[args.warmup:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default='configs/numclip_demo.py')
    parser.add_argument('--iters', type=int, default=30)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--out', default='work_dirs/benchmarks/train_overhead.json')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for r in range(args.repeats):
        bare = bare_times(args)
        step, cycle = runner_times(args)
        rows.append(dict(bare=bare, runner_step=step, runner_cycle=cycle))
        print(f'repeat {r}: bare {bare * 1e3:.1f} ms/iter, runner step {step * 1e3:.1f} ms, '
              f'runner step-to-step {cycle * 1e3:.1f} ms', flush=True)
    bare = statistics.median(r['bare'] for r in rows)
    step = statistics.median(r['runner_step'] for r in rows)
    cycle = statistics.median(r['runner_cycle'] for r in rows)
    summary = dict(config=args.config, batch_size=args.batch_size, iters=args.iters, threads=args.threads,
                   bare_s_per_iter=bare, runner_step_s_per_iter=step, runner_cycle_s_per_iter=cycle,
                   ratio_step=step / bare, ratio_cycle=cycle / bare, repeats=rows)
    print(f'\n{args.config}, batch {args.batch_size}, {args.threads} threads, median of {args.repeats} repeats')
    print(f'  bare PyTorch loop        {bare * 1e3:8.1f} ms/iter')
    print(f'  Runner train step        {step * 1e3:8.1f} ms/iter   ratio {step / bare:.3f}')
    print(f'  Runner step-to-step      {cycle * 1e3:8.1f} ms/iter   ratio {cycle / bare:.3f}  (+ data and hooks)')
    os.makedirs(osp.dirname(args.out) or '.', exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(summary, f, indent=1)


if __name__ == '__main__':
    main()
