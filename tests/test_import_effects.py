"""Registering numclip_mm changes the process only as numclip_mm/_setup.py lists, each effect observable; a bare
``import numclip_mm`` changes nothing and imports neither torch nor mmpretrain."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r'''
import copyreg, sys
import torch
import numclip_mm.register
from numclip_mm import _setup
from mmengine.logging.history_buffer import HistoryBuffer
from numclip_mm.utils.checkpoint import rebuild_history_buffer
import open_clip
from mmpretrain.registry import DATASETS, METRICS, MODELS, TRANSFORMS
assert set(_setup.APPLIED) == {'torchvision_fallback', 'checkpoint_pickling', 'open_clip_model_configs',
                               'registries'}, _setup.APPLIED
assert all(_setup.APPLIED[k] for k in ('checkpoint_pickling', 'open_clip_model_configs', 'registries'))
assert copyreg.dispatch_table[HistoryBuffer] is not None
assert rebuild_history_buffer in torch.serialization.get_safe_globals()
assert {'numclip-tiny', 'numclip-demo'} <= set(open_clip.list_models())
assert MODELS.get('NumCLIP') and DATASETS.get('OrdinalDataset') and TRANSFORMS.get('LoadOrdinalImage')
assert METRICS.get('OrdinalMetric')
import torchvision  # importable whatever the fallback decided
print('fallback', _setup.APPLIED['torchvision_fallback'])
'''


def test_import_effects_are_the_listed_ones():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, '-c', PROBE], env=env, cwd=str(ROOT), capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() in ('fallback True', 'fallback False')


def test_bare_import_is_cheap_and_registers_nothing():
    code = ('import sys, numclip_mm; from numclip_mm import _setup; '
            'print(sorted(m for m in ("torch", "mmengine", "mmpretrain", "open_clip", "torchvision") '
            'if m in sys.modules), '
            'dict(_setup.APPLIED), numclip_mm.get_task("age").num_bins)')
    out = subprocess.run([sys.executable, '-c', code], cwd=str(ROOT), capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == '[] {} 5'


INFERENCE_PROBE = r'''
import sys
import numclip_mm.inference
heavy = ("mmpretrain", "open_clip", "torchvision", "mmengine.config", "numclip_mm.models", "numclip_mm.datasets",
         "numclip_mm.evaluation", "numclip_mm.engine", "pandas")
print(sorted(m for m in heavy if m in sys.modules))
from numclip_mm.inference import Predictor
predictor = Predictor(sys.argv[1])
print(sorted(m for m in heavy if m in sys.modules))
'''


def test_inference_imports_only_what_it_uses():
    """``import numclip_mm.inference`` imports no model stack; a Predictor then imports the model stack only
    (mmpretrain, open_clip, numclip_mm.models), never numclip_mm's datasets, metrics or runner (pandas with them)."""
    out = subprocess.run([sys.executable, '-c', INFERENCE_PROBE, str(ROOT / 'tests/configs/numclip_tiny.py')],
                         cwd=str(ROOT), capture_output=True, text=True, timeout=240,
                         env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1'))
    assert out.returncode == 0, out.stderr[-3000:]
    before, after = out.stdout.strip().splitlines()[-2:]
    assert before == '[]'
    assert after == str(sorted(['mmengine.config', 'mmpretrain', 'numclip_mm.models', 'open_clip', 'torchvision']))
