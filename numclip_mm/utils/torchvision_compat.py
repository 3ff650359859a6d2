"""Let torchvision import when its compiled ops do not match the installed torch.

PyPI's torchvision wheels are built against the CUDA torch of the same release. Beside a CPU-only torch their
``_C`` extension fails to load, and ``import torchvision`` then dies in ``_meta_registrations`` because the
``torchvision::nms``/``qnms`` op schemas were never defined. open_clip and mmpretrain both import torchvision, so
nothing in the stack would import.

:func:`ensure_torchvision_importable` defines those two schemas (with a pure-PyTorch CPU ``nms``) *only* when the
compiled extension cannot be loaded. A working torchvision (any GPU install) is left untouched. The transforms keep
working; ``torch.ops.torchvision.nms`` runs the reference below; the other compiled ops (roi_align, deform_conv, io
decoding) stay unavailable, and NumCLIP uses none of them. ``import numclip_mm`` applies it first
(:mod:`numclip_mm._setup`, which lists every import-time effect).
"""
import importlib.util
import os
import sys

import torch

_SCHEMA = 'nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor'
_installed = False
_libraries: list = []  # keep the Library objects alive for the process lifetime


def _nms_reference(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression on (x1, y1, x2, y2) boxes; returns kept indices by descending score."""
    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    order = scores.argsort(descending=True)
    # Pairwise IoU once, then a short sequential sweep over the sorted boxes.
    xx1 = torch.maximum(x1[:, None], x1[None, :])
    yy1 = torch.maximum(y1[:, None], y1[None, :])
    xx2 = torch.minimum(x2[:, None], x2[None, :])
    yy2 = torch.minimum(y2[:, None], y2[None, :])
    inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
    iou = inter / (areas[:, None] + areas[None, :] - inter).clamp(min=torch.finfo(dets.dtype).tiny)
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=dets.device)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=dets.device)


def _compiled_ops_load() -> bool:
    spec = importlib.util.find_spec('torchvision')
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision at all: nothing to patch
    lib_dir = spec.submodule_search_locations[0]
    candidates = [f for f in os.listdir(lib_dir) if f.startswith('_C.') and f.endswith(('.so', '.pyd'))]
    if not candidates:
        return False
    try:
        torch.ops.load_library(os.path.join(lib_dir, candidates[0]))
        return True
    except (OSError, RuntimeError):
        return False


def ensure_torchvision_importable() -> bool:
    """Define the missing torchvision op schemas if (and only if) the compiled ops fail to load.

    Returns True when the fallback was installed. Safe to call many times; a no-op once torchvision is imported.
    """
    global _installed
    if _installed or 'torchvision' in sys.modules or _compiled_ops_load():
        return _installed
    lib = torch.library.Library('torchvision', 'DEF')
    lib.define(_SCHEMA)
    lib.define('q' + _SCHEMA)
    lib.impl('nms', _nms_reference, 'CPU')
    _libraries.append(lib)
    _installed = True
    return True

