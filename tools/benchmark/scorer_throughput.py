"""Cost per image of the Ray batch scorer (batch/) against a bare single-process loop, on realistic catalogs.

For each catalog kind (JPEGs of mixed sizes, about 256 to 1024 px, and PNGs of the same sizes):

1. bare loop: this process reads the Parquet files, decodes, preprocesses and runs the same Predictor
   (images/s, CPU seconds per 1,000 images).
2. the scorer, started cold in a child process (the driver: ``prepare``, then a local Ray, then ``run``) with 1 and 2
   actors: images/s (wall from process start, Python and Ray start-up included), time to the first prediction (from
   the start of ``prepare``), CPU seconds per 1,000 images summed over every process of the run (the driver, the Ray
   daemons and every Ray worker: ``psutil`` samples of the whole process tree every 0.2 s, the last value per
   process; a lower bound by at most 0.2 s per process), peak RSS summed over the tree, and the bytes the driver
   process read and wrote (its ``/proc/self/io`` rchar/wchar: every read/write call, sockets included) while
   scoring, next to the catalog's bytes; the one-off bytes of the up-front checks (footers, checkpoint digest) and
   of starting Ray are reported apart.

    python tools/benchmark/scorer_throughput.py [--config configs/numclip_demo.py --checkpoint CKPT]

Without --checkpoint a randomly initialised checkpoint of the config's model is written (speed does not depend on
the weights). Figures go to stdout and --out (JSON).
"""
import argparse
import io
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--config', default=str(REPO / 'configs' / 'numclip_demo.py'))
    p.add_argument('--checkpoint')
    p.add_argument('--out', default='work_dirs/benchmarks/scorer_throughput.json')
    p.add_argument('--num-images', type=int, default=1200, help='images per catalog')
    p.add_argument('--num-files', type=int, default=4)
    p.add_argument('--kinds', nargs='+', default=['jpeg', 'png'])
    p.add_argument('--min-size', type=int, default=256)
    p.add_argument('--max-size', type=int, default=1024)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--actors', type=int, nargs='+', default=[1, 2])
    p.add_argument('--num-cpus', type=int, default=2)
    p.add_argument('--precision', default=None)
    p.add_argument('--workdir', default=None, help='where catalogs and outputs go (default: a temp dir)')
    args = p.parse_args()
    if args.num_images <= args.batch_size:
        p.error(f'--num-images ({args.num_images}) must exceed --batch-size ({args.batch_size}): the steady rate '
                f'is measured over the images after the first batch')
    return args


def photo(rng, h, w):
    """A photo-like image (smooth colour field + texture), so JPEG/PNG sizes are realistic (noise is not)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    c = rng.uniform(0, 1, (3, 3))
    img = np.stack([128 + 100 * np.sin(x / (20 + 60 * c[k, 0]) + c[k, 1] * 6) * np.cos(y / (25 + 50 * c[k, 2]))
                    for k in range(3)], axis=-1)
    img += rng.normal(0, 12, (h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(img, kind):
    from PIL import Image
    buf = io.BytesIO()
    if kind == 'jpeg':
        Image.fromarray(img).save(buf, format='JPEG', quality=90)
    else:
        Image.fromarray(img).save(buf, format='PNG', compress_level=6)
    return buf.getvalue()


def write_catalog(folder: Path, kind: str, n: int, files: int, lo: int, hi: int, seed: int = 0) -> int:
    """``files`` Parquet files with ``id`` and ``image``; sizes uniform in [lo, hi] (both sides). Returns bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bases = [photo(rng, hi, hi) for _ in range(4)]
    start = 0
    for f in range(files):
        count = n // files + (f < n % files)
        cells = []
        for i in range(start, start + count):
            h, w = (int(v) for v in rng.integers(lo, hi + 1, 2))
            y, x = (int(v) for v in rng.integers(0, hi - max(h, w) + 1, 2))
            img = bases[i % 4][y:y + h, x:x + w].copy()
            img[0, :3] = (i % 256, (i // 256) % 256, 7)  # every image distinct
            cells.append(encode(img, kind))
        pq.write_table(pa.table({'id': pa.array(range(start, start + count), pa.int64()),
                                 'image': pa.array(cells, pa.binary())}),
                       folder / f'part-{f:03d}.parquet', row_group_size=64)
        start += count
    return sum(p.stat().st_size for p in folder.glob('*.parquet'))


def proc_io():
    with open('/proc/self/io') as f:
        return {k: int(v) for k, v in (line.split(': ') for line in f)}


class TreeSampler(threading.Thread):
    """Every ``interval`` s: CPU seconds (the last value seen per process) and summed RSS of the process ``pid`` and
    all its descendants (the scoring driver, the Ray daemons it starts and every Ray worker)."""

    def __init__(self, pid: int, interval=0.2):
        super().__init__(daemon=True)
        import psutil
        self.psutil, self.root, self.interval = psutil, psutil.Process(pid), interval
        self.cpu = {}
        self.series = []
        self.peak_rss = 0
        self._halt = threading.Event()

    def sample(self):
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except self.psutil.NoSuchProcess:
            return
        rss = 0
        for p in procs:
            try:
                t = p.cpu_times()
                self.cpu[(p.pid, p.create_time())] = t.user + t.system + t.children_user + t.children_system
                rss += p.memory_info().rss
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                pass
        self.peak_rss = max(self.peak_rss, rss)
        self.series.append((time.time(), sum(self.cpu.values())))

    def cpu_at(self, t: float) -> float:
        """Summed CPU seconds of the tree at time ``t`` (the last sample before it)."""
        before = [c for s, c in self.series if s <= t]
        return before[-1] if before else 0.0

    def run(self):
        while not self._halt.is_set():
            self.sample()
            time.sleep(self.interval)

    def stop(self):
        self._halt.set()
        self.join()


def run_sampled(cmd, env=None, capture_stderr=False):
    """Run ``cmd`` in a child process while a :class:`TreeSampler` follows its whole process tree.
    Returns (returncode, stdout, stderr or None, wall seconds, sampler)."""
    import subprocess
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE if capture_stderr else None, text=True)
    sampler = TreeSampler(child.pid)
    sampler.start()
    stdout, stderr = child.communicate()
    wall = time.perf_counter() - t0
    sampler.stop()
    return child.returncode, stdout, stderr, wall, sampler


def random_checkpoint(config: str, work: Path) -> str:
    """A checkpoint of the config's model with seeded random weights (the speed does not depend on them)."""
    import torch
    from numclip_mm.inference import Predictor
    torch.manual_seed(0)
    checkpoint = str(work / 'model.pth')
    torch.save({'state_dict': Predictor(config).model.state_dict()}, checkpoint)
    return checkpoint


def bare_loop(predictor, catalog: Path, batch_size: int):
    """Single process, no Ray: read, decode, preprocess, predict, batch after batch."""
    import torch
    from numclip_mm.inference import decode_image
    pre = predictor.preprocessor
    predictor.predict_tensors(torch.zeros((1, 3, *predictor.input_size), dtype=torch.uint8))  # warm-up
    cpu0, t0 = time.process_time(), time.perf_counter()
    n = 0
    for f in sorted(catalog.glob('*.parquet')):
        for rb in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=['image']):
            predictor.predict_tensors(torch.stack([pre(decode_image(c)) for c in rb.column(0).to_pylist()]))
            n += rb.num_rows
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return dict(images=n, seconds=wall, images_per_s=n / wall, cpu_s_per_1000=1000 * cpu / n,
                torch_threads=torch.get_num_threads())


def driver(spec: dict) -> dict:
    """The scoring driver (run in its own process by :func:`scorer_run`): prepare, start Ray, score; its own
    /proc/self/io between phases."""
    from numclip_mm.batch.pipeline import ScoreOptions, ensure_ray, prepare, run
    opts = ScoreOptions(**spec)
    io0, t0 = proc_io(), time.perf_counter()
    job = prepare(opts)  # the up-front checks, then Ray, as the command line does
    t_prepared = time.perf_counter() - t0
    ensure_ray(opts)
    import ray.data  # noqa: F401  (the driver's own imports are not catalog bytes)
    ray.data.DataContext.get_current().enable_progress_bars = False
    io1 = proc_io()
    report = run(job)
    io2 = proc_io()
    scored_at = time.time()
    import ray
    ray.shutdown()
    return dict(images=report['rows_scored'], prepare_s=t_prepared, first_output_s=report['first_output_s'],
                first_output_at=scored_at - report['seconds'] + report['first_output_s'], scored_at=scored_at,
                setup_read_bytes=io1['rchar'] - io0['rchar'],
                driver_read_bytes=io2['rchar'] - io1['rchar'], driver_written_bytes=io2['wchar'] - io1['wchar'])


def scorer_run(config, checkpoint, catalog: Path, out: Path, actors: int, args, catalog_bytes: int):
    spec = dict(config=config, checkpoint=checkpoint, input=str(catalog), output=str(out), batch_size=args.batch_size,
                num_actors=actors, overwrite=True, num_cpus=args.num_cpus, precision=args.precision,
                cpus_per_actor=args.num_cpus / actors, torch_threads=max(1, args.num_cpus // actors),
                progress_interval_s=1e9)
    t0_epoch = time.time()
    returncode, stdout, _, wall, sampler = run_sampled([sys.executable, __file__, '--driver', json.dumps(spec)])
    if returncode != 0:
        raise RuntimeError(f'the scoring driver failed ({returncode})')
    d = json.loads(stdout.strip().splitlines()[-1])
    n = d['images']
    out_rows = sum(pq.read_metadata(f).num_rows for f in out.glob('*.parquet'))
    assert out_rows == n == args.num_images, (out_rows, n)
    cpu = sum(sampler.cpu.values())
    steady_cpu = sampler.cpu_at(d['scored_at']) - sampler.cpu_at(d['first_output_at'])
    steady_s = d['scored_at'] - d['first_output_at']
    steady_n = n - min(n, args.batch_size)  # the images after the first batch
    scoring_bytes = d['driver_read_bytes'] + d['driver_written_bytes']
    return dict(actors=actors, images=n, seconds=wall, images_per_s=n / wall,
                first_prediction_s=d['first_output_at'] - t0_epoch, prepare_s=d['prepare_s'],
                cpu_s_per_1000=1000 * cpu / n, steady_images_per_s=steady_n / steady_s,
                steady_cpu_s_per_1000=1000 * steady_cpu / steady_n,
                peak_rss_mb=sampler.peak_rss / 2 ** 20, processes=len(sampler.cpu),
                driver_read_bytes=d['driver_read_bytes'], driver_written_bytes=d['driver_written_bytes'],
                driver_bytes_fraction_of_catalog=scoring_bytes / catalog_bytes,
                setup_read_bytes=d['setup_read_bytes'])


def main():
    if len(sys.argv) == 3 and sys.argv[1] == '--driver':
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(driver(json.loads(sys.argv[2]))))
        return
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', '0')
    work = Path(args.workdir or tempfile.mkdtemp(prefix='scorer-bench-'))
    work.mkdir(parents=True, exist_ok=True)
    from numclip_mm.inference import Predictor
    checkpoint = args.checkpoint or random_checkpoint(args.config, work)
    predictor = Predictor(args.config, checkpoint, precision=args.precision)
    results = dict(config=args.config, batch_size=args.batch_size, num_cpus=args.num_cpus,
                   checkpoint_bytes=os.path.getsize(checkpoint), catalogs={})
    for kind in args.kinds:
        cat = work / f'catalog-{kind}'
        t = time.perf_counter()
        size = write_catalog(cat, kind, args.num_images, args.num_files, args.min_size, args.max_size)
        print(f'{kind}: {args.num_images} images of {args.min_size}-{args.max_size} px, {size / 1e6:.1f} MB in '
              f'{args.num_files} files (written in {time.perf_counter() - t:.1f} s)', flush=True)
        bare = bare_loop(predictor, cat, args.batch_size)
        print(f"  bare loop ({bare['torch_threads']} torch threads): {bare['images_per_s']:.1f} img/s, "
              f"{bare['cpu_s_per_1000']:.1f} CPU s / 1000 images", flush=True)
        entry = dict(catalog_bytes=size, bare=bare, scorer={})
        for actors in args.actors:
            r = scorer_run(args.config, checkpoint, cat, work / f'out-{kind}-{actors}', actors, args, size)
            r['images_per_s_vs_bare'] = r['images_per_s'] / bare['images_per_s']
            r['cpu_vs_bare'] = r['cpu_s_per_1000'] / bare['cpu_s_per_1000']
            r['steady_images_per_s_vs_bare'] = r['steady_images_per_s'] / bare['images_per_s']
            r['steady_cpu_vs_bare'] = r['steady_cpu_s_per_1000'] / bare['cpu_s_per_1000']
            entry['scorer'][actors] = r
            print(f"  scorer, {actors} actor(s): cold (start-up included) {r['images_per_s']:.1f} img/s "
                  f"({r['images_per_s_vs_bare']:.2f}x bare), {r['cpu_s_per_1000']:.1f} CPU s / 1000 images over "
                  f"{r['processes']} processes ({r['cpu_vs_bare']:.2f}x bare); after the first prediction "
                  f"{r['steady_images_per_s']:.1f} img/s ({r['steady_images_per_s_vs_bare']:.2f}x), "
                  f"{r['steady_cpu_s_per_1000']:.1f} CPU s / 1000 ({r['steady_cpu_vs_bare']:.2f}x); first prediction "
                  f"after {r['first_prediction_s']:.1f} s; peak RSS {r['peak_rss_mb']:.0f} MiB; driver read "
                  f"{r['driver_read_bytes'] / 1e6:.2f} MB + wrote {r['driver_written_bytes'] / 1e6:.2f} MB while "
                  f"scoring = {100 * r['driver_bytes_fraction_of_catalog']:.2f} % of the catalog (once: "
                  f"{r['setup_read_bytes'] / 1e6:.1f} MB for imports, up-front checks and starting Ray)", flush=True)
        results['catalogs'][kind] = entry
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
