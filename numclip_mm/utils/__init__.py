from .checkpoint import (CheckpointMismatchError, check_state_dict, load_weights_only, register_safe_globals,
                         safe_globals)
from .torchvision_compat import ensure_torchvision_importable

__all__ = ['CheckpointMismatchError', 'check_state_dict', 'ensure_torchvision_importable', 'load_weights_only', 'register_safe_globals', 'safe_globals']
