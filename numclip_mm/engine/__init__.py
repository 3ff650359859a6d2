"""Runtime pieces for MMEngine: strict weights-only loading, device-chosen defaults, CPU distributed training."""
from .._setup import prepare_runtime

prepare_runtime()  # before the imports below: torchvision must be importable first

from .cpu_ddp import CPUDistributedDataParallel, destroy_distributed, init_cpu_distributed  # noqa: E402
from .device_defaults import amp_available, choose_dist_backend, fall_back_from_amp, resolve_dist_backend  # noqa: E402
from .runner import StrictLoadRunner  # noqa: E402

__all__ = ['CPUDistributedDataParallel', 'StrictLoadRunner', 'amp_available', 'choose_dist_backend',
           'destroy_distributed', 'fall_back_from_amp', 'init_cpu_distributed', 'resolve_dist_backend']
