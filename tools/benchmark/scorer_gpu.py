"""The batch scorer on a GPU machine: NumCLIP on CLIP ViT-B/16 (random weights, the real shapes) at fp16 and bf16,
CPU decode tasks feeding one inference actor per GPU (the scorer's GPU defaults), on a catalog of 256-1024 px JPEGs,
side by side with what a user would otherwise run on that machine. Columns, each a child process timed from its
spawn (imports, model build and start-up included):

1. ceiling (per precision): the same Predictor on random preprocessed batches, no decoding: the GPU's own rate,
   the most any feeding can reach.
2. bare: the same Predictor in a loop on the GPU, decoding in its one process (the first ``--bare-images``).
3. loader: the loop a PyTorch user writes for a GPU: a ``DataLoader`` whose workers (one per CPU but one) decode
   the Parquet row groups, pinned batches, the same Predictor.
4. scorer (per precision): ``numclip-score --precision P`` with its defaults otherwise.

Per column: images/s end to end and after the first prediction, the first prediction's time, GPU utilisation (mean
and median of samples every 0.5 s from the first prediction to the end) and GPU memory (peak used), from ``pynvml``
when installed, else ``nvidia-smi``; the scorer's own sizing (actors, decode tasks). A few minutes on one GPU with
the defaults (the checkpoint and the catalog, written by one process per file, included).

    python tools/benchmark/scorer_gpu.py                      # on the GPU machine
    python tools/benchmark/scorer_gpu.py --smoke              # anywhere: tiny model, 256 images, CPU, fp32 + bf16

``--smoke`` runs the same code paths on CPU (decode tasks + inference actors, no GPU asked) so that the script is
known to work before a GPU is lent; ``--smoke --model-name ViT-B-16`` checks the real shapes (slowly). JSON goes to
--out after every column, so a cut run keeps what it measured.
"""
import argparse
import concurrent.futures as cf
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import scorer_throughput
import torch
from scorer_throughput import (  # a sibling script (its folder is on sys.path)
    first_batch_marker,
    random_checkpoint,
    write_catalog,
)
from torch.utils.data import IterableDataset

REPO = Path(__file__).resolve().parents[2]
CHILDREN = ('ceiling', 'bare', 'loader')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--smoke', action='store_true', help='few images, on CPU (checks the script)')
    p.add_argument('--model-name', default=None,
                   help='open_clip model of the image tower (default ViT-B-16; smoke: the demo model)')
    p.add_argument('--precisions', nargs='+', default=None,
                   help='default: fp16 bf16 (smoke: fp32 bf16); the last is the loops\' and is measured first')
    p.add_argument('--images', type=int, default=None, help='default: 20000 (smoke: 256)')
    p.add_argument('--bare-images', type=int, default=None, help='images of the bare loop (default 3000; smoke 64)')
    p.add_argument('--files', type=int, default=16)
    p.add_argument('--columns', nargs='+', default=['ceiling', 'bare', 'loader', 'scorer'],
                   choices=['ceiling', 'bare', 'loader', 'scorer'])
    p.add_argument('--batch-size', type=int, default=None, help='default: the scorer\'s (256 per GPU actor)')
    p.add_argument('--out', default='work_dirs/benchmarks/scorer_gpu.json')
    p.add_argument('--workdir', default=None)
    args = p.parse_args(argv)
    args.precisions = args.precisions or (['fp32', 'bf16'] if args.smoke else ['fp16', 'bf16'])
    args.images = args.images or (256 if args.smoke else 20000)
    args.bare_images = min(args.bare_images or (64 if args.smoke else 3000), args.images)
    args.model_name = args.model_name or (None if args.smoke else 'ViT-B-16')
    return args


class GpuSampler(threading.Thread):
    """Utilisation (%) and memory used (MiB) of every GPU every ``interval`` s (pynvml, else nvidia-smi)."""

    def __init__(self, interval=0.5):
        super().__init__(daemon=True)
        self.interval, self.samples, self._halt = interval, [], threading.Event()
        try:
            import pynvml
            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.nvml, self.source = pynvml, 'pynvml'
        except Exception:  # noqa: BLE001  (no pynvml or no driver: nvidia-smi, or nothing)
            self.nvml, self.handles = None, []
            self.source = 'nvidia-smi' if shutil.which('nvidia-smi') else None

    def read(self):
        if self.nvml is not None:
            return [(self.nvml.nvmlDeviceGetUtilizationRates(h).gpu,
                     self.nvml.nvmlDeviceGetMemoryInfo(h).used / 2 ** 20) for h in self.handles]
        out = subprocess.run(['nvidia-smi', '--query-gpu=utilization.gpu,memory.used', '--format=csv,noheader,nounits'],
                             capture_output=True, text=True, timeout=10).stdout
        return [tuple(float(v) for v in line.split(',')) for line in out.strip().splitlines()]

    def run(self):
        while self.source and not self._halt.is_set():
            try:
                self.samples.append((time.time(), self.read()))
            except Exception:  # noqa: BLE001  (one failed read is one missing sample)
                pass
            time.sleep(self.interval)

    def stop(self):
        self._halt.set()
        self.join()

    def summary(self, start: float, end: float) -> dict:
        window = [gpus for t, gpus in self.samples if start <= t <= end]
        if not window:
            return dict(gpu_source=self.source, gpu_samples=0)
        util = [sum(u for u, _ in gpus) / len(gpus) for gpus in window]
        return dict(gpu_source=self.source, gpu_samples=len(window), gpu_util_mean=statistics.mean(util),
                    gpu_util_median=statistics.median(util),
                    gpu_memory_peak_mib=max(max(m for _, m in gpus) for gpus in window))


def write_config(work: Path, model_name: str) -> str:
    """The demo's NumCLIP with another open_clip image tower and no pretrained weights (random, real shapes)."""
    path = work / f'numclip_{model_name.replace("-", "_").lower()}.py'
    path.write_text(f"_base_ = [{str(REPO / 'configs' / 'numclip_demo.py')!r}]\n"
                    f"model = dict(clip=dict(model_name={model_name!r}, pretrained=None))\n")
    return str(path)


def write_catalog_parallel(folder: Path, n: int, files: int, lo: int, hi: int, row_group_size: int = 256) -> None:
    """``files`` Parquet files of JPEGs (ids 0..n-1 in order), one process per file: minutes become seconds on a
    GPU machine's many cores."""
    counts = [n // files + (f < n % files) for f in range(files)]
    starts = [sum(counts[:f]) for f in range(files)]
    parts = folder.with_name(folder.name + '.parts')
    with cf.ProcessPoolExecutor(min(files, os.cpu_count() or 1)) as pool:
        done = [pool.submit(write_catalog, parts / str(f), 'jpeg', counts[f], 1, lo, hi, f, row_group_size, starts[f])
                for f in range(files)]
        for d in done:
            d.result()
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        (parts / str(f) / 'part-000.parquet').rename(folder / f'part-{f:03d}.parquet')
    shutil.rmtree(parts)


# ---- child processes (``scorer_gpu.py --<column> SPEC``): each prints one JSON line last ----

def _device(spec: dict) -> str:
    return 'cuda' if torch.cuda.is_available() and not spec.get('cpu') else 'cpu'


def _gpu_memory() -> dict:
    if not torch.cuda.is_available():
        return {}
    return dict(torch_peak_allocated_mib=torch.cuda.max_memory_allocated() / 2 ** 20)


def ceiling_main(spec: dict) -> dict:
    """The Predictor on random preprocessed batches (already stacked, CPU memory, as the actor gets them)."""
    from numclip_mm.inference import Predictor
    predictor = Predictor(spec['config'], spec['checkpoint'], device=_device(spec), precision=spec['precision'])
    size = predictor.input_size
    batch = torch.randint(0, 256, (spec['batch_size'], 3, size[0], size[1]), dtype=torch.uint8)
    for _ in range(3):  # warm-up: kernels chosen, allocator filled
        predictor.predict_tensors(batch)
    first_batch_marker(Path(spec['marks']))
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < spec['seconds']:
        predictor.predict_tensors(batch)  # returns numpy: the batch is done on the device
        n += len(batch)
    return dict(images=n, images_per_s_model=n / (time.perf_counter() - t), **_gpu_memory())


def bare_main(spec: dict) -> dict:
    """The Predictor in a loop on the device, decoding in this one process (scorer_throughput.py's bare loop)."""
    return dict(scorer_throughput.bare_main(dict(spec, device=_device(spec))), **_gpu_memory())


class RowGroups(IterableDataset):
    """Preprocessed batches of a catalog: each DataLoader worker decodes its share of the row groups (round robin)
    in slices of ``batch_size`` rows."""

    def __init__(self, files, batch_size, preprocessor):
        import pyarrow.parquet as pq
        self.items = [(f, g) for f in files for g in range(pq.ParquetFile(f).num_row_groups)]
        self.batch_size, self.pre = batch_size, preprocessor

    def __iter__(self):
        import pyarrow.parquet as pq

        from numclip_mm.inference import decode_image
        info = torch.utils.data.get_worker_info()
        mine = self.items[info.id::info.num_workers] if info else self.items
        for f, g in mine:
            cells = pq.ParquetFile(f).read_row_group(g, columns=['image']).column(0).to_pylist()
            for i in range(0, len(cells), self.batch_size):
                yield torch.stack([self.pre(decode_image(c)) for c in cells[i:i + self.batch_size]])


def loader_main(spec: dict) -> dict:
    """A DataLoader (one worker per CPU but one, pinned memory) feeding the Predictor on the device."""
    from numclip_mm.inference import Predictor
    device = _device(spec)
    predictor = Predictor(spec['config'], spec['checkpoint'], device=device, precision=spec['precision'])
    workers = max(1, (os.cpu_count() or 2) - 1)
    data = RowGroups(sorted(Path(spec['input']).glob('*.parquet')), spec['batch_size'], predictor.preprocessor)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers, pin_memory=device == 'cuda',
                                         prefetch_factor=4)
    n = 0
    for batch in loader:
        predictor.predict_tensors(batch)
        if not n:
            first_batch_marker(Path(spec['marks']))
        n += len(batch)
    return dict(images=n, workers=workers, **_gpu_memory())


# ---- the parent: one timed child per column ----

def figures(run, images: int, batch_size: int, sampler: GpuSampler) -> dict:
    """A column's figures from its :class:`scorer_throughput.ChildRun`: images/s end to end and after the first
    batch (None for a one-batch run), the first prediction, peak RSS, the GPU's samples in between."""
    end = run.t_spawn + run.wall
    after_first = images - batch_size
    return dict(images=images, seconds=run.wall, images_per_s=images / run.wall,
                first_prediction_s=run.first_at - run.t_spawn,
                steady_images_per_s=after_first / max(end - run.first_at, 1e-9) if after_first > 0 else None,
                peak_rss_mb=run.sampler.peak_rss / 2 ** 20, **sampler.summary(run.first_at, end))


def run_child(column: str, spec: dict, work: Path, sampler: GpuSampler) -> dict:
    run = scorer_throughput.run_loop(__file__, column, spec, work)
    result = dict(run.report)
    return dict(figures(run, result.pop('images'), spec['batch_size'], sampler), **result)


def run_scorer(spec: dict, precision: str, work: Path, sampler: GpuSampler, smoke: bool,
               batch_size: int = None) -> dict:
    options = ['--precision', precision, '--engine', 'ray', '--address', 'local']
    if smoke:  # the GPU layout on CPU: decode tasks feed the inference actors
        options += ['--decode-in', 'tasks', '--num-actors', '1', '--cpus-per-actor', '0.5']
    if batch_size:
        options += ['--batch-size', str(batch_size)]
    run = scorer_throughput.run_scorer(f'scorer_{precision}', spec, work / f'out-{precision}',
                                       work / f'summary-{precision}.json', options)
    s = run.report
    sizing_line = next((line for line in run.stderr.splitlines() if 'scoring with' in line), '')  # the log's own
    return dict(figures(run, s['rows_scored'], s['sizing']['batch_size'], sampler), sizing=s['sizing'],
                sizing_line=sizing_line.strip(), ray_ready_s=run.ray_ready_s)


def describe(r: dict) -> str:
    steady = r.get('steady_images_per_s')
    text = (f'{r["images_per_s"]:8.1f} img/s end to end, {"n/a" if steady is None else f"{steady:.1f}"} img/s after '
            f'the first prediction ({r["first_prediction_s"]:.1f} s)')
    if 'images_per_s_model' in r:
        text = f'{r["images_per_s_model"]:8.1f} img/s on the device (no decoding)'
    if r.get('gpu_samples'):
        text += (f'; GPU util {r["gpu_util_mean"]:.0f} % mean / {r["gpu_util_median"]:.0f} % median, memory peak '
                 f'{r["gpu_memory_peak_mib"]:.0f} MiB')
    return text


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    for column in CHILDREN:
        if len(argv) == 2 and argv[0] == f'--{column}':
            print(json.dumps(globals()[f'{column}_main'](json.loads(argv[1]))))
            return None
    args = parse_args(argv)
    os.environ.setdefault('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', '0')
    work = Path(args.workdir or tempfile.mkdtemp(prefix='scorer-gpu-'))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    config = write_config(work, args.model_name) if args.model_name else str(REPO / 'configs' / 'numclip_demo.py')
    checkpoint = random_checkpoint(config, work)
    print(f'checkpoint ({args.model_name or "demo model"}) written in {time.perf_counter() - t0:.0f} s', flush=True)
    cat = work / 'catalog'
    if not cat.exists():
        write_catalog_parallel(cat, args.images, args.files, 256, 1024)
    print(f'checkpoint and {args.images} JPEGs ready in {time.perf_counter() - t0:.0f} s', flush=True)
    results = dict(model=args.model_name or 'numclip-demo', smoke=args.smoke, images=args.images,
                   bare_images=args.bare_images, cpus=os.cpu_count(), torch=torch.__version__,
                   gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                   date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), load_before=os.getloadavg(), runs={},
                   failed={})
    spec = dict(config=config, checkpoint=checkpoint, input=str(cat), images=args.images, cpu=args.smoke,
                batch_size=args.batch_size or 256, seconds=1 if args.smoke else 10)
    # most wanted first, should a time limit cut the run: the scorer at its default precision, the DataLoader loop
    # beside it, the device's ceilings, the bare loop, the scorer at the other precisions
    default = args.precisions[-1]
    plan = {
        f'scorer_{default}': lambda: run_scorer(spec, default, work, sampler, args.smoke, args.batch_size),
        f'loader_{default}': lambda: run_child('loader', dict(spec, precision=default), work, sampler),
        **{f'ceiling_{p}': (lambda p=p: run_child('ceiling', dict(spec, precision=p), work, sampler))
           for p in args.precisions},
        f'bare_{default}': lambda: run_child('bare', dict(spec, precision=default, images=args.bare_images), work,
                                             sampler),
        **{f'scorer_{p}': (lambda p=p: run_scorer(spec, p, work, sampler, args.smoke, args.batch_size))
           for p in args.precisions[:-1]},
    }
    plan = [(name, run) for name, run in plan.items() if name.split('_')[0] in args.columns]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sampler = GpuSampler()
    sampler.start()
    try:
        for name, run in plan:
            try:
                results['runs'][name] = r = run()
                print(f'{name:12s} {describe(r)}' + (f'; {r["sizing_line"]}' if r.get('sizing_line') else ''),
                      flush=True)
            except Exception as err:  # noqa: BLE001  (one column's failure is recorded; the others still run)
                results['failed'][name] = ''.join(traceback.format_exception_only(type(err), err))[-3000:]
                print(f'{name:12s} FAILED: {results["failed"][name]}', flush=True)
            out.write_text(json.dumps(dict(results, load_after=os.getloadavg()), indent=2))
    finally:
        sampler.stop()
    print(f'wrote {out}')
    return results


if __name__ == '__main__':
    main()
