"""What importing numclip-mm's entry modules costs, against torch's own import.

Each module is imported in a fresh ``python -X importtime -c 'import X'`` process, ``--repeats`` times; the table
gives the median wall time of the whole import (the interpreter's start subtracted: ``python -c pass``), the gap to
``import torch``, the time spent in the bodies of the modules torch's import does not load ("beyond": what the import
adds to torch, summed from ``-X importtime``'s self times; on a busy machine the difference of two wall times is
mostly noise) and the slowest top-level packages among them (self times summed per package).

    python tools/benchmark/import_time.py                 # table + docs/results/import_time.json
    python tools/benchmark/import_time.py --repeats 5 --modules numclip_mm.inference
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from typing import Dict, List, Tuple

# numclip_mm.models: what building a Predictor's model imports on top (mmpretrain, open_clip, torchvision)
MODULES = ('torch', 'numclip_mm', 'numclip_mm.inference', 'numclip_mm.batch.pipeline', 'numclip_mm.batch.actor',
           'numclip_mm.models', 'numclip_mm.register')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_import(module: str) -> Tuple[float, List[Tuple[int, int, str]]]:
    """Wall seconds of a fresh interpreter importing ``module``, and its ``-X importtime`` rows
    (self us, cumulative us, indented name)."""
    code = f'import {module}' if module else 'pass'
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, '-X', 'importtime', '-c', code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f'import {module} failed:\n{proc.stderr[-2000:]}')
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith('import time:') or 'self [us]' in line:
            continue
        self_us, cumulative, name = (part.strip() if i < 2 else part for i, part in
                                     enumerate(line[len('import time:'):].split('|', 2)))
        rows.append((int(self_us), int(cumulative), name.rstrip()))
    return wall, rows


def self_time_by_package(rows: List[Tuple[int, int, str]]) -> Dict[str, float]:
    """Seconds spent in each top-level package's own module bodies (``-X importtime``'s self times summed per
    package), so that a package is charged for its own code only, not for what it imports."""
    totals: Dict[str, float] = defaultdict(float)
    for self_us, _, name in rows:
        totals[name.strip().split('.')[0]] += self_us / 1e6
    return dict(totals)


def modules_of(rows: List[Tuple[int, int, str]]) -> set:
    return {name.strip() for _, _, name in rows}


def own_seconds_beyond(rows: List[Tuple[int, int, str]], baseline: set) -> float:
    """Seconds spent in the bodies of the modules that ``baseline`` (torch's import) does not load: what importing
    the module adds to torch, less sensitive to a busy machine than the difference of two wall times."""
    return sum(self_us for self_us, _, name in rows if name.strip() not in baseline) / 1e6


def packages(rows: List[Tuple[int, int, str]]) -> set:
    return {name.strip().split('.')[0] for _, _, name in rows}


def measure(module: str, repeats: int) -> Dict[str, object]:
    runs = [run_import(module) for _ in range(repeats)]
    walls = [w for w, _ in runs]
    median_run = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    return dict(module=module, wall_s=statistics.median(walls), walls_s=walls, rows=median_run[1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--modules', nargs='+', default=list(MODULES))
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--top', type=int, default=6, help='slowest packages listed per module')
    parser.add_argument('--out', default=os.path.join(ROOT, 'docs', 'results', 'import_time.json'))
    args = parser.parse_args(argv)

    startup = statistics.median(run_import('')[0] for _ in range(args.repeats))
    modules = list(dict.fromkeys(['torch', *args.modules]))
    results = {m: measure(m, args.repeats) for m in modules}
    torch_s = results['torch']['wall_s'] - startup
    torch_packages = packages(results['torch']['rows'])
    torch_modules = modules_of(results['torch']['rows'])
    table = []
    print(f'python -X importtime, median of {args.repeats} fresh processes each; interpreter start '
          f'({startup:.2f} s) subtracted')
    print(f'{"module":28s} {"import s":>9s} {"vs torch":>9s} {"beyond":>7s}  slowest packages beyond torch\'s (own s)')
    for m in modules:
        r = results[m]
        seconds = r['wall_s'] - startup
        beyond = {k: v for k, v in self_time_by_package(r['rows']).items()
                  if k not in torch_packages or m == 'torch'}
        top = sorted(beyond.items(), key=lambda kv: -kv[1])[:args.top]
        gap = seconds - torch_s
        beyond_s = 0.0 if m == 'torch' else own_seconds_beyond(r['rows'], torch_modules)
        print(f'{m:28s} {seconds:9.2f} {gap:+9.2f} {beyond_s:7.2f}  ' + ', '.join(f'{k} {v:.2f}' for k, v in top))
        table.append(dict(module=m, import_s=round(seconds, 3), vs_torch_s=round(gap, 3),
                          own_beyond_torch_s=round(beyond_s, 3),
                          runs_s=[round(w - startup, 3) for w in r['walls_s']],
                          imports_torch='torch' in packages(r['rows']) or m == 'torch',
                          top_packages={k: round(v, 3) for k, v in top}))
    goal = next((t for t in table if t['module'] == 'numclip_mm.inference'), None)
    if goal is not None:
        for what, key in (('wall time', 'vs_torch_s'), ('own module time', 'own_beyond_torch_s')):
            verdict = 'met' if goal[key] <= 1.0 else 'missed'
            print(f'goal: import numclip_mm.inference <= torch + 1 s, by {what}: {verdict} ({goal[key]:+.2f} s)')
    load = os.getloadavg() if hasattr(os, 'getloadavg') else None
    report = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                  python=sys.version.split()[0], platform=platform.platform(), cpus=os.cpu_count(),
                  load_average=load, repeats=args.repeats, interpreter_start_s=round(startup, 3),
                  torch_import_s=round(torch_s, 3), modules=table)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=2)
    print(f'written: {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
