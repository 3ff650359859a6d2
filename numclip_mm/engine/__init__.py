"""Runtime pieces for MMEngine: CPU distributed training."""
from .cpu_ddp import CPUDistributedDataParallel, init_cpu_distributed

__all__ = ['CPUDistributedDataParallel', 'init_cpu_distributed']
