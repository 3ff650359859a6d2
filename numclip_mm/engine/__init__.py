"""Runtime pieces for MMEngine: strict weights-only loading, device-chosen defaults, CPU distributed training."""
from .cpu_ddp import CPUDistributedDataParallel, init_cpu_distributed
from .device_defaults import amp_available, choose_dist_backend, fall_back_from_amp, resolve_dist_backend
from .runner import StrictLoadRunner

__all__ = ['CPUDistributedDataParallel', 'StrictLoadRunner', 'amp_available', 'choose_dist_backend',
           'fall_back_from_amp', 'init_cpu_distributed', 'resolve_dist_backend']
