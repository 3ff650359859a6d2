"""The batch scorer on a GPU machine: NumCLIP on CLIP ViT-B/16 (random weights, the real shapes) at fp16 and bf16,
CPU decode tasks feeding one inference actor per GPU (the scorer's GPU defaults), on a catalog of 256-1024 px JPEGs.

For each precision: images/s end to end and after the first prediction, the first prediction's time, GPU utilisation
(mean and median of samples every 0.5 s while scoring) and GPU memory (peak used), from ``pynvml`` when installed,
else ``nvidia-smi``; the scorer's own sizing line (actors, decode tasks). About 10 minutes on one GPU with the
defaults (writing the checkpoint and the catalog included).

    python tools/benchmark/scorer_gpu.py                      # on the GPU machine
    python tools/benchmark/scorer_gpu.py --smoke              # anywhere: tiny model, 256 images, CPU, fp32 + bf16

``--smoke`` runs the same code path on CPU (decode tasks + inference actors, no GPU asked) so that the script is known
to work before a GPU is lent. JSON goes to --out.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from scorer_throughput import (  # a sibling script (its folder is on sys.path)
    random_checkpoint,
    run_sampled,
    write_catalog,
)

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--smoke', action='store_true', help='tiny model, few images, on CPU (checks the script)')
    p.add_argument('--model-name', default='ViT-B-16', help='open_clip model of the image tower')
    p.add_argument('--precisions', nargs='+', default=None, help='default: fp16 bf16 (smoke: fp32 bf16)')
    p.add_argument('--images', type=int, default=None, help='default: 20000 (smoke: 256)')
    p.add_argument('--files', type=int, default=8)
    p.add_argument('--batch-size', type=int, default=None, help='default: the scorer\'s (256 per GPU actor)')
    p.add_argument('--out', default='work_dirs/benchmarks/scorer_gpu.json')
    p.add_argument('--workdir', default=None)
    args = p.parse_args(argv)
    args.precisions = args.precisions or (['fp32', 'bf16'] if args.smoke else ['fp16', 'bf16'])
    args.images = args.images or (256 if args.smoke else 20000)
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


def main(argv=None):
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix='scorer-gpu-'))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    config = str(REPO / 'configs' / 'numclip_demo.py') if args.smoke else write_config(work, args.model_name)
    checkpoint = random_checkpoint(config, work)
    cat = work / 'catalog'
    if not cat.exists():
        write_catalog(cat, 'jpeg', args.images, args.files, 256, 1024, row_group_size=256)
    print(f'checkpoint and {args.images} JPEGs ready in {time.perf_counter() - t0:.0f} s', flush=True)
    results = dict(model=('numclip-demo' if args.smoke else args.model_name), smoke=args.smoke, images=args.images,
                   date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), load_before=os.getloadavg(), runs={})
    sampler = GpuSampler()
    sampler.start()
    try:
        for precision in args.precisions:
            out, summary_path = work / f'out-{precision}', work / f'summary-{precision}.json'
            cmd = [sys.executable, '-m', 'numclip_mm.batch.score', '--config', config, '--checkpoint', checkpoint,
                   '--input', str(cat), '--output', str(out), '--overwrite', '--address', 'local',
                   '--precision', precision, '--summary-json', str(summary_path)]
            if args.smoke:  # the GPU layout on CPU: decode tasks feed the inference actors
                cmd += ['--decode-in', 'tasks', '--num-actors', '1', '--cpus-per-actor', '0.5']
            if args.batch_size:
                cmd += ['--batch-size', str(args.batch_size)]
            t_spawn = time.time()
            returncode, _, stderr, wall, tree = run_sampled(cmd, capture_stderr=True)
            if returncode != 0:
                raise RuntimeError(f'{precision}: the scorer failed ({returncode}): {stderr[-3000:]}')
            s = json.loads(summary_path.read_text())
            first_at = s['started_at'] + s['first_output_s']
            n = s['rows_scored']
            after_first = n - s['sizing']['batch_size']  # rows after the first batch (none: a one-batch run)
            steady = after_first / max(t_spawn + wall - first_at, 1e-9) if after_first > 0 else None
            r = dict(images=n, seconds=wall, images_per_s=n / wall, first_prediction_s=first_at - t_spawn,
                     steady_images_per_s=steady, sizing=s['sizing'], peak_rss_mb=tree.peak_rss / 2 ** 20,
                     **sampler.summary(first_at, t_spawn + wall))
            results['runs'][precision] = r
            steady_text = 'n/a' if steady is None else f'{steady:.1f}'
            print(f'{precision}: {r["images_per_s"]:.1f} img/s end to end, {steady_text} img/s after the first '
                  f'prediction ({r["first_prediction_s"]:.1f} s); GPU util '
                  f'{r.get("gpu_util_mean", float("nan")):.0f} % mean, memory peak '
                  f'{r.get("gpu_memory_peak_mib", float("nan")):.0f} MiB ({r["gpu_source"]}); sizing {s["sizing"]}',
                  flush=True)
    finally:
        sampler.stop()
    results['load_after'] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f'wrote {out}')
    return results


if __name__ == '__main__':
    main()
