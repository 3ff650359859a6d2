"""The batch scorer against a bare loop and a plain Ray Data script, end to end, on catalogs of small PNGs and large
JPEGs: three columns measured in one run, interleaved (bare, Ray Data, scorer, bare, ...), medians of ``--repeats``.

1. bare: one Python process (no Ray) reads the Parquet files, decodes, preprocesses and runs the same Predictor
   batch after batch (torch's default threads).
2. ray_data: the script a competent Ray user would write with the same Predictor: ``ray.data.read_parquet ->
   map_batches(actor class holding a Predictor, ActorPoolStrategy sized to the machine: one 1-thread actor per CPU,
   half a CPU each so the read tasks always find one) -> write_parquet``. No row-order, per-row error, atomic-output
   or resume guarantee.
3. scorer: ``numclip-score`` with its defaults (the engine it picks for this machine, sized by itself: on a small
   machine with no Ray cluster, threads of its own process; numclip_mm.batch.engine), as a user's jobs after the
   first with a model run: the model's trace is in the graph cache (the benchmark's own, filled once before the
   timed runs).
4. scorer_cold: the same with ``--graph-cache off``: a model's first job (the driver builds and traces it).
5. scorer_ray: the same as 3 on Ray (``--engine ray --address local``: a private instance, actors sized by the
   scorer, the driver scoring while they start): what the scorer does on a cluster, and on a machine too large for
   the in-process engine.

Each column runs as a child process, timed from its spawn (Python, imports, Ray and model start-up included):
end-to-end images/s; the first prediction (bare: the first batch; ray_data: the first batch an actor finished;
scorer: the first prediction back in its driver; on Ray the driver scores while the actors start); steady-state
images/s and CPU seconds per 1,000 images from the first prediction (on Ray: the actors' first, when start-up is over)
to the end,
summed over the whole process tree (psutil samples every 0.2 s: the driver, the Ray daemons and every worker). The
load average before and after is recorded (the machine may be shared).

    python tools/benchmark/scorer_throughput.py [--config configs/numclip_demo.py --checkpoint CKPT]

Without --checkpoint a randomly initialised checkpoint of the config's model is written (speed does not depend on
the weights). Figures go to stdout and --out (JSON).
"""
import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
CATALOGS = {  # name: (kind, images, files, min px, max px)
    'png64': ('png', 20000, 4, 64, 64),
    'jpeg256-1024': ('jpeg', 1200, 4, 256, 1024),
}
COLUMNS = ('bare', 'ray_data', 'scorer', 'scorer_cold', 'scorer_ray')


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--config', default=str(REPO / 'configs' / 'numclip_demo.py'))
    p.add_argument('--checkpoint')
    p.add_argument('--out', default='work_dirs/benchmarks/scorer_throughput.json')
    p.add_argument('--catalogs', nargs='+', default=list(CATALOGS), choices=list(CATALOGS))
    p.add_argument('--scale', type=float, default=1.0, help='fraction of each catalog\'s images (quick checks)')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--columns', nargs='+', default=list(COLUMNS), choices=COLUMNS)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--row-group-size', type=int, default=1000)
    p.add_argument('--workdir', default=None, help='where catalogs and outputs go (default: a temp dir)')
    return p.parse_args()


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


def write_catalog(folder: Path, kind: str, n: int, files: int, lo: int, hi: int, seed: int = 0,
                  row_group_size: int = 64, first_id: int = 0) -> int:
    """``files`` Parquet files with ``id`` (from ``first_id``) and ``image``; sizes uniform in [lo, hi] (both
    sides). Returns bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bases = [photo(rng, hi, hi) for _ in range(4)]
    start = first_id
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
                       folder / f'part-{f:03d}.parquet', row_group_size=row_group_size)
        start += count
    return sum(p.stat().st_size for p in folder.glob('*.parquet'))


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
    t0 = time.perf_counter()
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get('PYTHONPATH')) if p)  # the caller's kept after
    child = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=path, **(env or {})),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE if capture_stderr else None, text=True)
    sampler = TreeSampler(child.pid)
    sampler.start()
    stdout, stderr = child.communicate()
    wall = time.perf_counter() - t0
    sampler.stop()
    return child.returncode, stdout, stderr, wall, sampler


def random_checkpoint(config: str, work: Path) -> str:
    """A checkpoint of the config's model with seeded random weights (the speed does not depend on them; no CLIP
    file is read, so a paper config's ViT-B/16 needs no download)."""
    import torch

    from numclip_mm.inference import Predictor
    from numclip_mm.utils.config_file import load_config_file
    cfg = load_config_file(config, import_custom_modules=False)
    if cfg.model.get('clip', {}).get('pretrained'):
        cfg.model.clip.pretrained = None
    torch.manual_seed(0)
    checkpoint = str(work / 'model.pth')
    torch.save({'state_dict': Predictor(cfg).model.state_dict()}, checkpoint)
    return checkpoint


def first_batch_marker(folder: Path) -> None:
    """Record the time of this process's first prediction (read back as the column's first prediction)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f'{os.getpid()}.t').write_text(repr(time.time()))


def bare_main(spec: dict) -> dict:
    """Child process: the same Predictor in a loop, no Ray, over the catalog's first ``spec['images']`` images (on
    ``spec['device']`` at ``spec['precision']`` when given: scorer_gpu.py's bare loop)."""
    import torch

    from numclip_mm.inference import Predictor, decode_image
    predictor = Predictor(spec['config'], spec['checkpoint'], device=spec.get('device', 'cpu'),
                          precision=spec.get('precision'))
    pre = predictor.preprocessor
    n = 0
    for f in sorted(Path(spec['input']).glob('*.parquet')):
        for rb in pq.ParquetFile(f).iter_batches(batch_size=spec['batch_size'], columns=['image']):
            cells = rb.column(0).to_pylist()[:spec['images'] - n]
            predictor.predict_tensors(torch.stack([pre(decode_image(c)) for c in cells]))
            if not n:
                first_batch_marker(Path(spec['marks']))
            n += len(cells)
            if n >= spec['images']:
                return dict(images=n, torch_threads=torch.get_num_threads())
    return dict(images=n, torch_threads=torch.get_num_threads())


class PredictorActor:
    """The plain Ray Data column's callable class: one Predictor per actor, encoded images in, predictions out."""

    def __init__(self, config, checkpoint, marks, threads=1):
        import torch

        from numclip_mm.inference import Predictor
        torch.set_num_threads(threads)
        self.predictor, self.marks, self.first = Predictor(config, checkpoint), Path(marks), True

    def __call__(self, batch):
        import torch

        from numclip_mm.inference import decode_image
        pre = self.predictor.preprocessor
        out = self.predictor.predict_tensors(torch.stack([pre(decode_image(c)) for c in batch['image']]))
        if self.first:
            first_batch_marker(self.marks)
            self.first = False
        batch.update(value=out['value'], label=out['label'].astype(str), probability=out['probability'])
        return batch


def ray_data_main(spec: dict) -> dict:
    """Child process: read_parquet -> map_batches(PredictorActor, one 1-thread actor per CPU) -> write_parquet."""
    import ray
    ray.init(include_dashboard=False, _node_ip_address='127.0.0.1', log_to_driver=False)
    cpus = int(ray.cluster_resources()['CPU'])
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.read_parquet(spec['input'])
    ds = ds.map_batches(PredictorActor, batch_size=spec['batch_size'], batch_format='numpy',
                        fn_constructor_kwargs=dict(config=spec['config'], checkpoint=spec['checkpoint'],
                                                   marks=spec['marks']),
                        compute=ray.data.ActorPoolStrategy(size=cpus), num_cpus=0.5)
    ds.write_parquet(spec['output'])
    n = sum(pq.read_metadata(f).num_rows for f in Path(spec['output']).glob('*.parquet'))
    ray.shutdown()
    return dict(images=n, actors=cpus)


@dataclass
class ChildRun:
    """One timed child process (this benchmark's and scorer_gpu.py's columns): what it reported (the scorer's
    summary JSON, a loop's result line), its stderr, its spawn time (``time.time()``), wall seconds, the
    :class:`TreeSampler` that followed it and the ``time.time()`` of its first prediction."""
    report: dict
    stderr: str
    t_spawn: float
    wall: float
    sampler: TreeSampler
    first_at: float

    @property
    def ray_ready_s(self) -> Optional[float]:
        """A scorer run's seconds from the spawn until Ray was up (None: it ran in-process)."""
        if 'ray_ready_s' not in self.report:
            return None
        return self.report['ray_ready_s'] + self.report['started_at'] - self.t_spawn


def _timed(name: str, cmd) -> tuple:
    """(stdout, stderr, spawn time, wall, sampler) of ``cmd`` run by :func:`run_sampled`; RuntimeError naming
    ``name`` when it fails."""
    t_spawn = time.time()
    returncode, stdout, stderr, wall, sampler = run_sampled(cmd, capture_stderr=True)
    if returncode != 0:
        raise RuntimeError(f'{name} failed ({returncode}): {stderr[-3000:]}')
    return stdout, stderr, t_spawn, wall, sampler


def run_scorer(name: str, spec: dict, output, summary_path: Path, options=()) -> ChildRun:
    """``python -m numclip_mm.batch.score`` over ``spec['input']`` with ``spec``'s model, ``--overwrite`` into
    ``output``, plus ``options``. Raises RuntimeError naming ``name`` when it fails."""
    _, stderr, t_spawn, wall, sampler = _timed(name, [
        sys.executable, '-m', 'numclip_mm.batch.score', '--config', spec['config'], '--checkpoint', spec['checkpoint'],
        '--input', spec['input'], '--output', str(output), '--overwrite', '--summary-json', str(summary_path),
        *options])
    summary = json.loads(Path(summary_path).read_text())
    return ChildRun(summary, stderr, t_spawn, wall, sampler, summary['started_at'] + summary['first_output_s'])


def run_loop(script, column: str, spec: dict, work: Path) -> ChildRun:
    """``python SCRIPT --COLUMN SPEC``: a benchmark's loop in a child, which marks its first prediction in a folder
    (:func:`first_batch_marker`) and prints its result as the last JSON line. Raises RuntimeError naming ``column``
    when it fails."""
    marks = work / f'marks-{column}-{time.time_ns()}'
    stdout, stderr, t_spawn, wall, sampler = _timed(column, [sys.executable, str(script), f'--{column}',
                                                             json.dumps(dict(spec, marks=str(marks)))])
    return ChildRun(json.loads(stdout.strip().splitlines()[-1]), stderr, t_spawn, wall, sampler,
                    min(float(f.read_text()) for f in marks.glob('*.t')))


def run_column(column: str, spec: dict, work: Path) -> dict:
    """One timed child process of ``column``; its wall, first prediction and steady CPU from the process tree."""
    shutil.rmtree(spec['output'], ignore_errors=True)  # a reused --workdir: an earlier run's files must not count
    if column.startswith('scorer'):
        options = ['--quiet', '--graph-cache', 'off' if column == 'scorer_cold' else spec['graph_cache']]
        if column == 'scorer_ray':
            options += ['--engine', 'ray', '--address', 'local']
        run = run_scorer(column, spec, spec['output'], work / f'summary-{column}-{time.time_ns()}.json', options)
        summary = run.report
        images = summary['rows_scored']
        steady_from = summary['started_at'] + summary.get('actors_first_output_s', summary['first_output_s'])
        head = summary.get('head_start', {})
        extra = dict(engine=summary['engine']['name'], sizing=summary['sizing'], ray_ready_s=run.ray_ready_s,
                     actors_first_prediction_s=steady_from - run.t_spawn, driver_rows=head.get('rows', 0),
                     graph=summary['models'][0].get('graph', ''))
    else:
        run = run_loop(__file__, column, spec, work)
        extra = dict(run.report)
        images, steady_from = extra.pop('images'), run.first_at
    t_spawn, wall, sampler, first_at = run.t_spawn, run.wall, run.sampler, run.first_at
    t_end = t_spawn + wall
    if images != spec['images']:
        raise RuntimeError(f'{column} reported {images} images, the catalog holds {spec["images"]}')
    # the images after the first batch (scorer: after the actors' first, less what the driver had scored by then,
    # an upper bound of what was left: the steady rate is not overstated)
    steady_n = images - spec['batch_size'] - (extra.get('driver_rows', 0) if steady_from > first_at else 0)
    steady_s = t_end - steady_from
    steady_cpu = sampler.cpu_at(t_end + 1) - sampler.cpu_at(steady_from)
    return dict(images=images, seconds=wall, images_per_s=images / wall, first_prediction_s=first_at - t_spawn,
                steady_images_per_s=steady_n / steady_s, steady_cpu_s_per_1000=1000 * steady_cpu / steady_n,
                cpu_s_per_1000=1000 * sum(sampler.cpu.values()) / images, peak_rss_mb=sampler.peak_rss / 2 ** 20,
                processes=len(sampler.cpu), **extra)


def warm_graph_cache(config: str, checkpoint: str, catalog: Path, work: Path) -> str:
    """The benchmark's own graph cache, holding the model's trace (as after a user's first job with it)."""
    from numclip_mm.batch.pipeline import ScoreOptions, prepare
    cache = work / 'graph-cache'
    prepare(ScoreOptions(config=config, checkpoint=checkpoint, input=str(catalog), output=str(work / 'warm-up'),
                         graph_cache=str(cache)))
    return str(cache)


def main():
    for column in ('bare', 'ray_data'):
        if len(sys.argv) == 3 and sys.argv[1] == f'--{column}':
            os.environ.setdefault('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', '0')
            print(json.dumps(globals()[f'{column}_main'](json.loads(sys.argv[2]))))
            return
    args = parse_args()
    os.environ.setdefault('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', '0')
    work = Path(args.workdir or tempfile.mkdtemp(prefix='scorer-bench-'))
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or random_checkpoint(args.config, work)
    results = dict(config=args.config, batch_size=args.batch_size, cpus=os.cpu_count(), repeats=args.repeats,
                   date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), load_before=os.getloadavg(),
                   catalogs={})
    for name in args.catalogs:
        kind, n, files, lo, hi = CATALOGS[name]
        n = max(int(n * args.scale), files * args.batch_size * 2)
        cat = work / f'catalog-{name}-{n}'
        if not cat.exists():
            t = time.perf_counter()
            write_catalog(cat, kind, n, files, lo, hi, row_group_size=args.row_group_size)
            print(f'{name}: wrote {n} images in {time.perf_counter() - t:.0f} s', flush=True)
        size = sum(p.stat().st_size for p in cat.glob('*.parquet'))
        print(f'{name}: {n} {kind.upper()}s of {lo}-{hi} px, {size / 1e6:.0f} MB in {files} files', flush=True)
        spec = dict(config=args.config, checkpoint=checkpoint, input=str(cat), batch_size=args.batch_size, images=n,
                    graph_cache=warm_graph_cache(args.config, checkpoint, cat, work))
        runs = {c: [] for c in args.columns}
        for rep in range(args.repeats):
            for column in args.columns:  # interleaved: a change of load hits every column alike
                r = run_column(column, dict(spec, output=str(work / f'out-{name}-{column}-{rep}')), work)
                runs[column].append(r)
                print(f'  [{rep + 1}/{args.repeats}] {column:11s} {r["images_per_s"]:7.1f} img/s end to end, first '
                      f'prediction {r["first_prediction_s"]:5.1f} s, steady {r["steady_images_per_s"]:7.1f} img/s '
                      f'and {r["steady_cpu_s_per_1000"]:5.1f} CPU s / 1000 images (load {os.getloadavg()[0]:.1f})',
                      flush=True)
        medians = {c: {k: statistics.median(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))}
                   for c, rs in runs.items()}
        entry = dict(kind=kind, images=n, files=files, px=[lo, hi], catalog_bytes=size, runs=runs, median=medians)
        if 'bare' in medians:
            bare = medians['bare']
            entry['vs_bare'] = {c: dict(images_per_s=m['images_per_s'] / bare['images_per_s'],
                                        steady_cpu_per_image=m['steady_cpu_s_per_1000'] / bare['steady_cpu_s_per_1000'])
                                for c, m in medians.items()}
        for c in ('scorer', 'scorer_cold', 'scorer_ray'):
            if {'ray_data', c} <= set(medians):
                entry[f'{c}_vs_ray_data'] = medians[c]['images_per_s'] / medians['ray_data']['images_per_s']
        results['catalogs'][name] = entry
        write_json(args.out, dict(results, load_after=os.getloadavg()))  # after each catalog: a cut run keeps it
        print(f'{name} medians of {args.repeats}:', flush=True)
        for c, m in medians.items():
            rel = entry.get('vs_bare', {}).get(c, {})
            print(f'  {c:11s} {m["images_per_s"]:7.1f} img/s end to end ({rel.get("images_per_s", 0):.2f}x bare), '
                  f'first prediction {m["first_prediction_s"]:.1f} s, steady {m["steady_cpu_s_per_1000"]:.1f} CPU s '
                  f'/ 1000 images ({rel.get("steady_cpu_per_image", 0):.2f}x bare)', flush=True)
    write_json(args.out, dict(results, load_after=os.getloadavg()))
    print(f'wrote {args.out}')


def write_json(path: str, results: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == '__main__':
    main()
