"""A non-editable install (the wheel `pip install .` builds) carries the package data and the console command: the
demo model builds, with its packaged pretrained weights, and `numclip-score --help` runs from outside the checkout,
and no top-level `batch` module is installed."""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r'''
import importlib.util, os, sys
assert importlib.util.find_spec('batch') is None, importlib.util.find_spec('batch')  # no global 'batch' package
import numclip_mm
from numclip_mm.models.clip_loader import TINY_MODELS, build_open_clip
assert numclip_mm.__file__.startswith(sys.argv[1]), numclip_mm.__file__
assert set(TINY_MODELS) >= {'numclip-demo', 'numclip-tiny'}, TINY_MODELS
model = build_open_clip('numclip-demo', 'numclip-tiny-synth')  # the packaged weights, by tag
print('ok', sum(p.numel() for p in model.parameters()))
'''


def test_wheel_ships_model_configs_and_builds_the_demo_model(tmp_path):
    source = tmp_path / 'src'  # a copy: building writes build/ and *.egg-info next to setup.py
    source.mkdir()
    for name in ('setup.py', 'README.md', 'MANIFEST.in'):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / 'numclip_mm', source / 'numclip_mm', ignore=shutil.ignore_patterns('__pycache__'))
    wheels = tmp_path / 'wheels'
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', str(source),
                    '-w', str(wheels)], check=True, timeout=300, capture_output=True)
    wheel = next(wheels.glob('numclip_mm-*.whl'))
    names = zipfile.ZipFile(wheel).namelist()
    assert {'numclip_mm/models/model_configs/numclip-demo.json',
            'numclip_mm/models/model_configs/numclip-tiny.json',
            'numclip_mm/models/pretrained/numclip-demo-synth.safetensors'} <= set(names)
    assert {n.split('/')[0] for n in names if not n.split('/')[0].endswith(('.dist-info', '.data'))} == {'numclip_mm'}
    entry_points = next(n for n in names if n.endswith('.dist-info/entry_points.txt'))
    assert 'numclip-score = numclip_mm.batch.score:cli' in zipfile.ZipFile(wheel).read(entry_points).decode()
    target = tmp_path / 'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(target), str(wheel)],
                   check=True, timeout=300, capture_output=True)
    outside = tmp_path / 'elsewhere'
    outside.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), sysconfig.get_paths()['purelib']]))
    out = subprocess.run([sys.executable, '-c', PROBE, str(target)], cwd=str(outside), env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[0] == 'ok' and int(out.stdout.split()[1]) > 0
    assert not (target / 'batch').exists()
    script = target / 'bin' / 'numclip-score'  # the console script pip wrote for the entry point
    assert script.is_file()
    cli = subprocess.run([str(script), '--help'], cwd=str(outside), env=env, capture_output=True, text=True,
                         timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert cli.stdout.startswith('usage: numclip-score') and '--checkpoint' in cli.stdout
