"""Throughput and memory of the Ray batch scorer (batch/) against a bare single-process torch loop.

1. Throughput: a catalog of small PNGs is scored by the whole Ray pipeline (read -> decode -> actors -> Parquet)
   with 1 and 2 actors, and by a bare loop in this process running the same Predictor on the same images
   (decode + preprocess + predict_tensors, and predict_tensors alone on the already decoded batches: the
   practical limit). Prints images/s and the ratios.
2. Memory: a catalog of large random-noise PNGs (they barely compress), several times larger than the object store
   of the local Ray instance, is scored while a thread samples the summed RSS (and PSS, which counts shared
   object-store pages once) of the driver and every Ray process (all descendants of this process).

    python tools/benchmark/scorer_throughput.py [--config CFG --checkpoint CKPT] [--out work_dirs/benchmarks/...]

Without --config a tiny random-initialised NumCLIP (numclip-tiny, 32x32 input) is used, so the figures measure the
pipeline's overhead rather than a model; a real model shifts the ratio towards 1.
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
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run from anywhere: batch/ lives at the repo root


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--config')
    p.add_argument('--checkpoint')
    p.add_argument('--out', default='work_dirs/benchmarks/scorer_throughput.json')
    p.add_argument('--num-images', type=int, default=3000, help='throughput catalog size')
    p.add_argument('--image-size', type=int, default=64, help='side of the throughput catalog images')
    p.add_argument('--num-files', type=int, default=6)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--actors', type=int, nargs='+', default=[1, 2])
    p.add_argument('--big-mb', type=float, default=600, help='image bytes of the memory catalog (MB)')
    p.add_argument('--big-image-size', type=int, default=512)
    p.add_argument('--object-store-mb', type=int, default=100)
    p.add_argument('--num-cpus', type=int, default=2)
    p.add_argument('--workdir', default=None, help='where catalogs and outputs go (default: a temp dir)')
    return p.parse_args()


def png(array, level=1):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format='PNG', compress_level=level)
    return buf.getvalue()


def write_catalog(folder: Path, n: int, files: int, size: int, seed: int, level=1) -> int:
    """``files`` Parquet files with ``id`` and ``image`` (noise PNGs, each distinct). Returns image bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    total, start = 0, 0
    for f in range(files):
        count = n // files + (f < n % files)
        cells = []
        for i in range(start, start + count):
            img = np.roll(base, shift=(i * 7) % size, axis=(i % 2))
            img[0, 0] = (i % 256, (i // 256) % 256, 0)
            cells.append(png(img, level))
        total += sum(map(len, cells))
        pq.write_table(pa.table({'id': pa.array(range(start, start + count), pa.int64()),
                                 'image': pa.array(cells, pa.binary())}),
                       folder / f'part-{f:03d}.parquet', row_group_size=64)
        start += count
    return total


class MemorySampler(threading.Thread):
    """Sums RSS and PSS of this process and all its descendants (raylet, GCS, Ray workers) every ``interval`` s."""

    def __init__(self, interval=0.25):
        super().__init__(daemon=True)
        import ray  # noqa: F401  (puts Ray's vendored psutil on sys.path)
        import psutil
        self.psutil, self.interval = psutil, interval
        self.peak_rss = self.peak_pss = self.peak_procs = 0
        self._halt = threading.Event()

    def sample(self):
        me = self.psutil.Process()
        rss = pss = 0
        procs = [me] + me.children(recursive=True)
        for p in procs:
            try:
                info = p.memory_full_info()
                rss += info.rss
                pss += getattr(info, 'pss', info.rss)
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                pass
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(procs))

    def run(self):
        while not self._halt.is_set():
            self.sample()
            time.sleep(self.interval)

    def stop(self):
        self._halt.set()
        self.join()
        self.sample()


def bare_loop(predictor, catalog: Path, batch_size: int):
    """Single process: read, decode, preprocess, predict; and predict_tensors alone on the decoded batches."""
    import torch
    from numclip_mm.inference import decode_image
    pre = predictor.preprocessor
    t0 = time.perf_counter()
    batches, n = [], 0
    for f in sorted(catalog.glob('*.parquet')):
        for rb in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=['image']):
            batches.append(torch.stack([pre(decode_image(c)) for c in rb.column(0).to_pylist()]))
            n += rb.num_rows
    decode_s = time.perf_counter() - t0
    predictor.predict_tensors(batches[0])  # warm-up (text prototypes are cached after the first batch)
    t1 = time.perf_counter()
    for b in batches:
        predictor.predict_tensors(b)
    infer_s = time.perf_counter() - t1
    return dict(images=n, decode_preprocess_s=decode_s, inference_s=infer_s,
                inference_images_per_s=n / infer_s, end_to_end_images_per_s=n / (decode_s + infer_s),
                torch_threads=torch.get_num_threads())


def main():
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', '0')
    work = Path(args.workdir or tempfile.mkdtemp(prefix='scorer-bench-'))
    work.mkdir(parents=True, exist_ok=True)
    import torch
    from batch.pipeline import ScoreOptions, load_predictor, score_catalog

    config, checkpoint = args.config, args.checkpoint
    if config is None:
        config = str(REPO / 'tests' / 'configs' / 'numclip_tiny.py')
        if checkpoint is None:
            torch.manual_seed(0)
            checkpoint = str(work / 'tiny.pth')
            torch.save({'state_dict': load_predictor(config, None).model.state_dict(), 'meta': {}}, checkpoint)
    predictor = load_predictor(config, checkpoint)

    small = work / 'small'
    t = time.perf_counter()
    small_bytes = write_catalog(small, args.num_images, args.num_files, args.image_size, seed=0)
    print(f'throughput catalog: {args.num_images} images of {args.image_size}px, {small_bytes / 1e6:.1f} MB, '
          f'{args.num_files} files (written in {time.perf_counter() - t:.1f} s)', flush=True)
    bare = bare_loop(predictor, small, args.batch_size)
    print(f"bare loop (1 process, {bare['torch_threads']} torch threads): inference only "
          f"{bare['inference_images_per_s']:.0f} img/s, decode+preprocess+inference "
          f"{bare['end_to_end_images_per_s']:.0f} img/s", flush=True)
    del predictor

    import ray
    ray.init(num_cpus=args.num_cpus, object_store_memory=args.object_store_mb * 1024 * 1024,
             include_dashboard=False, _node_ip_address='127.0.0.1', log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results = dict(config=config, checkpoint=checkpoint, batch_size=args.batch_size, num_cpus=args.num_cpus,
                   object_store_mb=args.object_store_mb, bare=bare, ray={})
    try:
        for actors in args.actors:
            opts = ScoreOptions(config=config, checkpoint=checkpoint, input=str(small), output=str(work / 'out'),
                                batch_size=args.batch_size, num_actors=actors, overwrite=True)
            rep = score_catalog(opts)
            files = rep['files']
            later = files[1:] if len(files) > 1 else files
            steady = sum(f['rows'] for f in later) / max(sum(f['seconds'] for f in later), 1e-9)
            r = dict(images=rep['rows_scored'], seconds=rep['seconds'], images_per_s=rep['rows_per_s'],
                     steady_images_per_s=steady,
                     ratio_vs_inference_only=rep['rows_per_s'] / bare['inference_images_per_s'],
                     ratio_vs_bare_end_to_end=rep['rows_per_s'] / bare['end_to_end_images_per_s'],
                     steady_ratio_vs_inference_only=steady / bare['inference_images_per_s'],
                     steady_ratio_vs_bare_end_to_end=steady / bare['end_to_end_images_per_s'])
            results['ray'][actors] = r
            print(f"ray pipeline, {actors} actor(s): {r['images_per_s']:.0f} img/s overall incl. start-up "
                  f"({r['seconds']:.1f} s), {steady:.0f} img/s after the first file; ratio vs bare inference-only "
                  f"{r['ratio_vs_inference_only']:.2f} (steady {r['steady_ratio_vs_inference_only']:.2f}), vs bare "
                  f"end-to-end {r['ratio_vs_bare_end_to_end']:.2f} (steady "
                  f"{r['steady_ratio_vs_bare_end_to_end']:.2f})", flush=True)

        big = work / 'big'
        n_big = max(1, int(args.big_mb * 1e6 / (args.big_image_size ** 2 * 3)))
        t = time.perf_counter()
        big_bytes = write_catalog(big, n_big, 8, args.big_image_size, seed=1, level=0)
        print(f'memory catalog: {n_big} noise PNGs of {args.big_image_size}px, {big_bytes / 1e6:.0f} MB of image '
              f'bytes ({big_bytes / (args.object_store_mb * 1024 * 1024):.1f}x the {args.object_store_mb} MiB object '
              f'store), written in {time.perf_counter() - t:.1f} s', flush=True)
        sampler = MemorySampler()
        sampler.sample()
        idle_rss, idle_pss = sampler.peak_rss, sampler.peak_pss
        sampler.start()
        rep = score_catalog(ScoreOptions(config=config, checkpoint=checkpoint, input=str(big),
                                         output=str(work / 'out-big'), batch_size=args.batch_size,
                                         num_actors=1, overwrite=True))
        sampler.stop()
        out_rows = sum(pq.read_metadata(f).num_rows for f in (work / 'out-big').glob('*.parquet'))
        assert out_rows == n_big, (out_rows, n_big)
        results['memory'] = dict(images=n_big, image_bytes=big_bytes, seconds=rep['seconds'],
                                 images_per_s=rep['rows_per_s'], peak_rss_sum_mb=sampler.peak_rss / 2 ** 20,
                                 peak_pss_sum_mb=sampler.peak_pss / 2 ** 20, idle_rss_sum_mb=idle_rss / 2 ** 20,
                                 idle_pss_sum_mb=idle_pss / 2 ** 20, max_processes=sampler.peak_procs)
        m = results['memory']
        print(f"memory: scored {n_big} images ({big_bytes / 2 ** 20:.0f} MiB) in {m['seconds']:.1f} s; peak summed "
              f"RSS {m['peak_rss_sum_mb']:.0f} MiB, PSS {m['peak_pss_sum_mb']:.0f} MiB over {m['max_processes']} "
              f"processes (Ray idle before the run: RSS {m['idle_rss_sum_mb']:.0f} MiB, PSS "
              f"{m['idle_pss_sum_mb']:.0f} MiB)", flush=True)
    finally:
        ray.shutdown()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
