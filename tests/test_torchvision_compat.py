"""The torchvision fallback: active only where the compiled ops fail to load, and its nms is correct."""
import subprocess
import sys
from pathlib import Path

import torch

from numclip_mm.utils import torchvision_compat

MODULE = Path(torchvision_compat.__file__)


def test_reference_nms_by_hand():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 9, 9.]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # IoU(3, 0) = 81/100, IoU(3, 1) = 64/(81+81-64) = 0.65, IoU(0, 1) = 81/100: box 3 keeps, 0 and 1 go, 2 stays
    assert torchvision_compat._nms_reference(boxes, scores, 0.5).tolist() == [3, 2]
    assert torchvision_compat._nms_reference(boxes, scores, 0.9).tolist() == [3, 0, 1, 2]
    assert torchvision_compat._nms_reference(boxes[:0], scores[:0], 0.5).numel() == 0


def test_installed_here_and_reachable_through_torch_ops():
    """This machine's torchvision wheel cannot load its ops beside CPU torch, so the fallback is what runs."""
    if torchvision_compat._compiled_ops_load():
        return  # a working torchvision (GPU machines): nothing was patched, nothing to check
    assert torchvision_compat.ensure_torchvision_importable() is True
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10.]])
    assert torch.ops.torchvision.nms(boxes, torch.tensor([0.5, 0.9]), 0.5).tolist() == [1]


def test_working_torchvision_is_left_untouched():
    """With loadable compiled ops the function defines nothing (run in a fresh process, module loaded alone)."""
    code = f"""
import importlib.util, torch
spec = importlib.util.spec_from_file_location('compat', {str(MODULE)!r})
compat = importlib.util.module_from_spec(spec); spec.loader.exec_module(compat)
compat._compiled_ops_load = lambda: True
print(compat.ensure_torchvision_importable(), hasattr(torch.ops.torchvision, 'qnms'))
"""
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['False', 'False']
