"""Soak test of the Ray batch scorer on a hostile catalog: a few per cent of the rows are pixel bombs (a small PNG
whose header claims 20000 x 20000 pixels), truncated JPEGs, wrong types (text, a PDF header, an empty cell, a null)
and odd sizes (1 x 1, 3 x 2000, 4000 x 8); the rest are ordinary JPEGs.

Reports rows/s, the peak RSS summed over the whole process tree (driver, Ray daemons, workers), and rows lost
(rows in - rows out, must be 0); checks that every hostile row got an error or (odd sizes) a prediction, and that
every ordinary row got a prediction.

    python tools/benchmark/scorer_soak.py [--num-images 3000 --hostile 0.04]
"""
import argparse
import io
import json
import os
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]

from scorer_throughput import photo, random_checkpoint, run_sampled  # a sibling script (tools/benchmark is on sys.path)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--config', default=str(REPO / 'configs' / 'numclip_demo.py'))
    p.add_argument('--checkpoint')
    p.add_argument('--num-images', type=int, default=3000)
    p.add_argument('--num-files', type=int, default=6)
    p.add_argument('--hostile', type=float, default=0.04, help='fraction of hostile rows')
    p.add_argument('--num-cpus', type=int, default=2)
    p.add_argument('--out', default='work_dirs/benchmarks/scorer_soak.json')
    p.add_argument('--workdir', default=None)
    return p.parse_args()


def jpeg(img):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format='JPEG', quality=85)
    return buf.getvalue()


def png(img):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format='PNG')
    return buf.getvalue()


def pixel_bomb(width=20000, height=20000):
    data = bytearray(png(np.zeros((8, 8, 3), np.uint8)))
    ihdr = data[12:29]
    ihdr[4:12] = struct.pack('>II', width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack('>I', zlib.crc32(bytes(ihdr)))
    return bytes(data)


# kind -> (maker(rng, good_jpeg), expected outcome: 'error' or 'prediction')
HOSTILE = {
    'bomb': (lambda rng, good: pixel_bomb(), 'error'),
    'truncated': (lambda rng, good: good[:len(good) // 3], 'error'),
    'text': (lambda rng, good: b'this row holds a caption, not an image', 'error'),
    'pdf': (lambda rng, good: b'%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n', 'error'),
    'empty': (lambda rng, good: b'', 'error'),
    'null': (lambda rng, good: None, 'error'),
    'tiny': (lambda rng, good: png(np.full((1, 1, 3), 200, np.uint8)), 'prediction'),
    'sliver': (lambda rng, good: png(np.full((3, 2000, 3), 90, np.uint8)), 'prediction'),
    'tall': (lambda rng, good: jpeg(np.full((4000, 8, 3), 30, np.uint8)), 'prediction'),
}


def write_catalog(folder: Path, n: int, files: int, hostile: float, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = photo(rng, 640, 640)
    kinds_all = []
    start = 0
    names = list(HOSTILE)
    for f in range(files):
        count = n // files + (f < n % files)
        cells, kinds = [], []
        for i in range(start, start + count):
            h, w = (int(v) for v in rng.integers(128, 512, 2))
            img = base[:h, :w].copy()
            img[0, :3] = (i % 256, (i // 256) % 256, 3)
            good = jpeg(img)
            if rng.random() < hostile:
                kind = names[int(rng.integers(len(names)))]
                cells.append(HOSTILE[kind][0](rng, good))
            else:
                kind = 'ok'
                cells.append(good)
            kinds.append(kind)
        pq.write_table(pa.table({'id': pa.array(range(start, start + count), pa.int64()),
                                 'image': pa.array(cells, pa.binary()), 'kind': kinds}),
                       folder / f'part-{f:03d}.parquet', row_group_size=128)
        kinds_all += kinds
        start += count
    return kinds_all


def main():
    args = parse_args()
    os.environ.setdefault('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', '0')
    work = Path(args.workdir or tempfile.mkdtemp(prefix='scorer-soak-'))
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or random_checkpoint(args.config, work)
    cat, out = work / 'catalog', work / 'out'
    kinds = write_catalog(cat, args.num_images, args.num_files, args.hostile)
    counts = {k: kinds.count(k) for k in ['ok', *HOSTILE]}
    print(f'catalog: {len(kinds)} rows, {sum(p.stat().st_size for p in cat.glob("*.parquet")) / 1e6:.1f} MB; '
          f'hostile rows: { {k: v for k, v in counts.items() if k != "ok" and v} }', flush=True)
    cmd = [sys.executable, '-m', 'numclip_mm.batch.score', '--config', args.config, '--checkpoint', checkpoint, '--input',
           str(cat), '--output', str(out), '--num-cpus', str(args.num_cpus), '--overwrite', '--quiet']
    returncode, stdout, stderr, wall, sampler = run_sampled(cmd, capture_stderr=True)
    if returncode != 0:
        print(stderr[-3000:])
        raise SystemExit(f'the scorer failed with exit code {returncode}')
    table = pa.concat_tables([pq.read_table(p, columns=['id', 'kind', 'count_error', 'count_value'])
                              for p in sorted(out.glob('*.parquet'))])
    rows_out = table.num_rows
    errors = table.column('count_error').to_pylist()
    values = table.column('count_value').to_pylist()
    wrong = []
    for kind, err, value in zip(table.column('kind').to_pylist(), errors, values):
        expected = 'prediction' if kind == 'ok' else HOSTILE[kind][1]
        got = 'prediction' if err is None and value is not None else 'error'
        if got != expected:
            wrong.append((kind, err))
    result = dict(rows_in=len(kinds), rows_out=rows_out, rows_lost=len(kinds) - rows_out,
                  rows_with_error=sum(e is not None for e in errors), unexpected_outcomes=len(wrong),
                  seconds=wall, rows_per_s=rows_out / wall, peak_rss_mb=sampler.peak_rss / 2 ** 20,
                  processes=len(sampler.cpu), hostile_rows=counts, cpu_s=sum(sampler.cpu.values()))
    print(f"soak: {rows_out}/{len(kinds)} rows out ({result['rows_lost']} lost), {result['rows_with_error']} with an "
          f"error, {len(wrong)} unexpected outcomes {wrong[:3]}; {result['rows_per_s']:.1f} rows/s over {wall:.1f} s "
          f"(start-up included); peak RSS {result['peak_rss_mb']:.0f} MiB summed over {result['processes']} "
          f"processes", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f'wrote {args.out}')
    if result['rows_lost'] or wrong:
        raise SystemExit(1)


if __name__ == '__main__':
    main()
