"""Distributed data parallel on CPU-only machines (gloo), where MMEngine 0.10 assumes CUDA.

MMEngine's pytorch launcher calls ``torch.cuda.set_device`` and its Runner passes ``device_ids=[LOCAL_RANK]`` to
DDP; both fail without a GPU. :func:`init_cpu_distributed` starts the gloo process group itself (the Runner then
skips its own init) and selects :class:`CPUDistributedDataParallel`, which builds MMEngine's DDP wrapper without
device ids. Nothing changes where CUDA is available.
"""
import torch
import torch.distributed as dist
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel:
    """Builds ``MMDistributedDataParallel(module, device_ids=None)``: the form DDP requires for CPU modules.

    Not a ``DistributedDataParallel`` subclass on purpose: the Runner adds ``device_ids`` for those.
    """

    def __new__(cls, module, **kwargs):
        kwargs.pop('device_ids', None)
        kwargs.setdefault('broadcast_buffers', False)
        return MMDistributedDataParallel(module=module, device_ids=None, **kwargs)


def init_cpu_distributed(cfg) -> bool:
    """For ``--launcher pytorch`` without CUDA: init gloo from torchrun's env and pick the CPU wrapper.

    Returns True when it did so.
    """
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(type='CPUDistributedDataParallel')
    return True
