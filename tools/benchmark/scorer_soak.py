"""Soak test of the batch scorer (the engine it picks, or ``--engine``) on a hostile catalog: a few per cent of the rows
are pixel bombs (a small PNG whose header claims 20000 x 20000 pixels), truncated JPEGs, wrong types (text, a PDF
header, an empty cell, a null) and odd sizes (1 x 1, 3 x 2000, 4000 x 8); the rest are ordinary JPEGs.

Reports rows/s, the peak RSS summed over the whole process tree (driver, Ray daemons, workers), and rows lost
(rows in - rows out, must be 0); checks that every hostile row got an error or (odd sizes) a prediction, and that
every ordinary row got a prediction.

Then the path-cell cases (one scorer run each, a small path catalog of ordinary images and a few hostile cells): a
FIFO, /dev/zero, a stalled and a slow http server on loopback (a thread of this process on 127.0.0.1), and a full
disk (the output on a small tmpfs, where this machine lets us mount one), beside a control run of ordinary rows.
Each reports its exit code, rows in/out, the outcome of every hostile row (the error it got) and its time, and the
case fails when a row is lost, a hostile row gets another outcome, or a run leaves a temporary file behind.

    python tools/benchmark/scorer_soak.py [--num-images 3000 --hostile 0.04] [--cases fifo http_slow ...]
"""
import argparse
import contextlib
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from numclip_mm.batch.engine import ENGINES

REPO = Path(__file__).resolve().parents[2]

from scorer_throughput import photo, random_checkpoint, run_sampled  # noqa: E402  (a sibling script in sys.path[0])


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--config', default=str(REPO / 'configs' / 'numclip_demo.py'))
    p.add_argument('--checkpoint')
    p.add_argument('--num-images', type=int, default=3000)
    p.add_argument('--num-files', type=int, default=6)
    p.add_argument('--hostile', type=float, default=0.04, help='fraction of hostile rows')
    p.add_argument('--num-cpus', type=int, default=2)
    p.add_argument('--engine', choices=ENGINES, default='auto',
                   help='the scorer\'s --engine (auto: in-process on a small machine alone)')
    p.add_argument('--cases', nargs='*', default=list(PATH_CASES), choices=list(PATH_CASES),
                   help='path-cell cases to run after the hostile catalog (default: all)')
    p.add_argument('--read-timeout', type=float, default=2.0, help='--read-timeout of the path-cell cases')
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


# ----------------------------------------------------------------------------------------------------------------
# path-cell cases

class _Server(BaseHTTPRequestHandler):
    """/ok.jpg; /stall: headers (a modest or, with ?claim, a 5 GB Content-Length), 10 bytes, then silence until the
    soak ends; /slow: the image, but only after twice the read timeout. Every wait ends (the server's release)."""

    def do_GET(self):
        srv = self.server
        srv.requests.append(('GET', self.path))
        route = self.path.split('?')[0]
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a reader that gave up already
            if route == '/stall':
                self.send_response(200)
                self.send_header('Content-Length', str(5 << 30) if 'claim' in self.path else '100000')
                self.end_headers()
                self.wfile.write(b'\xff\xd8\xff\xe0 stall')
                self.wfile.flush()
                srv.release.wait(120)
                return
            if route == '/slow':
                srv.release.wait(2 * srv.read_timeout)
            self.send_response(200)
            self.send_header('Content-Length', str(len(srv.image)))
            self.end_headers()
            self.wfile.write(srv.image)

    def do_HEAD(self):
        self.server.requests.append(('HEAD', self.path))
        self.send_error(405)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def loopback_server(image: bytes, read_timeout: float):
    srv = ThreadingHTTPServer(('127.0.0.1', 0), _Server)
    srv.daemon_threads, srv.requests, srv.release = True, [], threading.Event()
    srv.image, srv.read_timeout = image, read_timeout
    threading.Thread(target=srv.serve_forever, kwargs=dict(poll_interval=0.1), daemon=True).start()
    try:
        yield srv, f'http://127.0.0.1:{srv.server_address[1]}'
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str = '512k'):
    """A tmpfs at ``folder`` (root only); yields None where mounting is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        refused = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(folder)],
                                 capture_output=True).returncode
    except OSError:
        refused = True
    try:
        yield None if refused else folder
    finally:
        if not refused:
            subprocess.run(['umount', '-l', str(folder)], check=False)


# case -> hostile cells given (url, fifo), and the substring each hostile row's error must hold
PATH_CASES = {
    'control': (lambda url, fifo: [], None),
    'fifo': (lambda url, fifo: [fifo] * 4, 'a FIFO, not a regular file'),
    'dev_zero': (lambda url, fifo: ['/dev/zero'] * 4, 'under /dev'),
    'http_stalled': (lambda url, fifo: [f'{url}/stall'] * 3, 'timed out'),
    'http_stalled_5gb_claim': (lambda url, fifo: [f'{url}/stall?claim'] * 3, 'too large'),
    'http_slow': (lambda url, fifo: [f'{url}/slow'] * 3, 'timed out'),
    'disk_full': (None, 'No space left'),
}


def run_path_cases(args, checkpoint: str, work: Path) -> dict:
    rng = np.random.default_rng(1)
    images = work / 'images'
    images.mkdir(exist_ok=True)
    ok = []
    for i in range(16):
        path = images / f'ok{i}.jpg'
        path.write_bytes(jpeg(photo(rng, 160, 200)))
        ok.append(str(path))
    fifo = images / 'pipe.jpg'
    if not fifo.exists():
        os.mkfifo(fifo)
    results = {}
    with loopback_server(Path(ok[0]).read_bytes(), args.read_timeout) as (srv, url):
        for name in args.cases:
            make, expect = PATH_CASES[name]
            if name == 'disk_full':
                results[name] = disk_full_case(args, checkpoint, work / name)
            else:
                hostile = make(url, str(fifo))
                cells = ok[:8] + hostile + ok[8:]
                before = len(srv.requests)
                results[name] = run_case(args, checkpoint, work / name, cells, [None] * 8 + [expect] * len(hostile)
                                         + [None] * 8, ['--path-column', 'path'])
                if name.startswith('http'):
                    done = srv.requests[before:]
                    results[name]['http_requests'] = dict(GET=sum(m == 'GET' for m, _ in done),
                                                          HEAD=sum(m == 'HEAD' for m, _ in done))
            case = results[name]
            print(f"case {name}: exit {case.get('exit_code')}, {case.get('rows_out')}/{case.get('rows_in')} rows out, "
                  f"{case.get('seconds', 0):.1f} s, {'ok' if case.get('ok') else 'FAILED'}; "
                  f"{case.get('example_error') or case.get('note') or ''}", flush=True)
    control = results.get('control', {}).get('seconds')
    for case in results.values():  # what a case costs beyond the Ray start-up and the ordinary rows
        if control is not None and 'seconds' in case:
            case['seconds_over_control'] = round(case['seconds'] - control, 2)
    return results


def run_case(args, checkpoint: str, folder: Path, cells, expect, source_args, output: Path = None) -> dict:
    """One scorer run over a catalog of ``cells``; ``expect``: per row None (a prediction) or an error substring."""
    folder.mkdir(parents=True, exist_ok=True)
    cat, out = folder / 'catalog', output or folder / 'out'
    cat.mkdir(exist_ok=True)
    column = 'path' if '--path-column' in source_args else 'image'
    pq.write_table(pa.table({'id': pa.array(range(len(cells)), pa.int64()),
                             column: pa.array(cells, pa.string() if column == 'path' else pa.binary())}),
                   cat / 'part-000.parquet', row_group_size=8)
    cmd = [sys.executable, '-m', 'numclip_mm.batch.score', '--config', args.config, '--checkpoint', checkpoint,
           '--input', str(cat), '--output', str(out), '--num-cpus', str(args.num_cpus), '--overwrite', '--quiet',
           '--read-timeout', str(args.read_timeout), '--max-retries', '1', '--engine', args.engine, *source_args]
    returncode, stdout, stderr, wall, sampler = run_sampled(cmd, capture_stderr=True)
    result = dict(rows_in=len(cells), exit_code=returncode, seconds=round(wall, 2),
                  peak_rss_mb=round(sampler.peak_rss / 2 ** 20),
                  leftover_temporaries=[p.name for p in out.glob('.numclip-tmp-*')] if out.exists() else [])
    done = out / 'part-000.parquet'
    if not done.exists():
        result.update(rows_out=0, stderr_tail=stderr.strip().splitlines()[-1:] if stderr.strip() else [])
        return result
    table = pq.read_table(done)
    errors = table.column('count_error').to_pylist()
    wrong = [(i, want, got) for i, (want, got) in enumerate(zip(expect, errors))
             if (got is not None) != (want is not None) or (want is not None and want not in got)]
    hostile = [e for want, e in zip(expect, errors) if want is not None]
    result.update(rows_out=table.num_rows, hostile_rows=len(hostile),
                  rows_with_error=sum(e is not None for e in errors),
                  unexpected_outcomes=wrong[:5], example_error=hostile[0] if hostile else None,
                  ok=returncode == 0 and table.num_rows == len(cells) and not wrong
                  and not result['leftover_temporaries'])
    return result


def disk_full_case(args, checkpoint: str, folder: Path) -> dict:
    """The output folder on a 512 kB tmpfs, the outputs ~2 MB: the job must end (exit 1) naming the full disk, and
    leave no temporary file behind (it would keep the disk full)."""
    rng = np.random.default_rng(2)
    cells = [jpeg(photo(rng, 256, 320)) for _ in range(48)]
    with small_tmpfs(folder / 'small') as mounted:
        if mounted is None:
            return dict(skipped=True, ok=True, note='mounting a tmpfs is not allowed on this machine')
        result = run_case(args, checkpoint, folder, cells, [None] * len(cells), ['--image-column', 'image'],
                          output=mounted / 'out')
        result['disk_bytes'] = 512 << 10
    said = ' '.join(result.get('stderr_tail', []))
    result.update(error=said[-300:], ok=result['exit_code'] == 1 and 'No space left' in said
                  and not result['leftover_temporaries'])
    return result


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
    cmd = [sys.executable, '-m', 'numclip_mm.batch.score', '--config', args.config, '--checkpoint', checkpoint,
           '--input', str(cat), '--output', str(out), '--num-cpus', str(args.num_cpus), '--overwrite', '--quiet',
           '--engine', args.engine]
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
    result['cases'] = run_path_cases(args, checkpoint, work)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f'wrote {args.out}')
    failed = [name for name, case in result['cases'].items() if not case.get('ok', True)]
    if result['rows_lost'] or wrong or failed:
        raise SystemExit(f'failed: {failed}' if failed else 1)


if __name__ == '__main__':
    main()
