"""Settings that depend on the device present, decided when a run starts rather than written into configs.

- The distributed backend: configs say ``env_cfg.dist_cfg.backend='auto'``; it becomes NCCL where CUDA is
  available and gloo (the CPU path) otherwise. An explicit backend in the config is kept.
- Mixed precision: MMEngine's ``AmpOptimWrapper`` asserts that CUDA (or NPU/MLU) is present, so the paper configs
  (fp16, as the paper trains) fall back to ``OptimWrapper`` (fp32) on a CPU-only machine, with a one-line notice.
"""
import torch
from mmengine.logging import print_log

AUTO_BACKENDS = (None, '', 'auto')


def choose_dist_backend(backend=None) -> str:
    """``backend`` itself unless it is None/''/'auto'; then 'nccl' with CUDA, 'gloo' without."""
    if backend not in AUTO_BACKENDS:
        return backend
    return 'nccl' if torch.cuda.is_available() else 'gloo'


def resolve_dist_backend(cfg) -> str:
    """Write the chosen backend into ``cfg.env_cfg.dist_cfg.backend`` and return it."""
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    dist_cfg['backend'] = choose_dist_backend(dist_cfg.get('backend'))
    return dist_cfg['backend']


def amp_available() -> bool:
    """Whether MMEngine's AmpOptimWrapper can run here (it supports CUDA, NPU and MLU devices)."""
    from mmengine.device import is_cuda_available, is_mlu_available, is_npu_available
    return is_cuda_available() or is_npu_available() or is_mlu_available()


AMP_ONLY_KEYS = ('loss_scale', 'dtype', 'use_fsdp')


def fall_back_from_amp(cfg) -> bool:
    """On a machine without an AMP device, turn ``AmpOptimWrapper`` into ``OptimWrapper`` (fp32) with a notice.

    Also drops the AMP-only keys (``loss_scale``, ``dtype``, ``use_fsdp``) from any non-AMP wrapper, so that
    ``--cfg-options optim_wrapper.type=OptimWrapper`` on an AMP config works (``OptimWrapper`` rejects them).
    Returns True when it switched the wrapper type.
    """
    wrapper = cfg.get('optim_wrapper')
    if not wrapper:
        return False
    switched = wrapper.get('type') == 'AmpOptimWrapper' and not amp_available()
    if switched:
        wrapper['type'] = 'OptimWrapper'
        print_log('no CUDA device: training in fp32 with OptimWrapper instead of AmpOptimWrapper '
                  '(the same as --cfg-options optim_wrapper.type=OptimWrapper)', logger='current', level=30)
    if wrapper.get('type') != 'AmpOptimWrapper':
        for key in AMP_ONLY_KEYS:
            wrapper.pop(key, None)
    return switched
