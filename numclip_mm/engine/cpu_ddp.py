"""Distributed data parallel on CPU-only machines (gloo), where MMEngine 0.10 assumes CUDA.

MMEngine's pytorch launcher calls ``torch.cuda.set_device`` and its Runner passes ``device_ids=[LOCAL_RANK]`` to
DDP; both fail without a GPU. :func:`init_cpu_distributed` starts the gloo process group itself (the Runner then
skips its own init) and selects :class:`CPUDistributedDataParallel`, which builds MMEngine's DDP wrapper without
device ids. Nothing changes where CUDA is available.

:func:`destroy_distributed` ends the process group when a run is done (tools/train.py, tools/test.py), on any backend.
"""
import gc

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


def destroy_distributed() -> None:
    """Destroy the default process group, if one was started, while Python is still fully alive.

    The tools call it when a run has finished; MMEngine never does. Without it, gloo's worker threads outlive
    ``main``: the thread that ran the last collective (MMEngine's ``broadcast_object_list`` of the metrics) can still
    be releasing that collective's tensors, which needs the GIL, when the main thread is already finalizing the
    interpreter. Python then ends that thread inside a C++ destructor and the whole process aborts ("terminate
    called without an active exception", SIGABRT) after a run that succeeded, and torchrun reports it failed.
    PyTorch asks every program that starts a process group to destroy it; this does so such that the group's
    threads are joined here, while Python is alive, rather than during interpreter shutdown.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    # The finished Runner lives on in reference cycles (its loops point back at it) until the next collection, and
    # its DDP model's reducer holds the group: collect it first, so that destroy_process_group drops the last
    # reference and the group's destructor joins its worker threads now.
    gc.collect()
    dist.destroy_process_group()
