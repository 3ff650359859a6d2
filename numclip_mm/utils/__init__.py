from .checkpoint import (
                         CheckpointLoadError,
                         CheckpointMismatchError,
                         UnsafeCheckpointError,
                         check_state_dict,
                         load_checkpoint_file,
                         load_weights_only,
                         model_state_dict,
                         register_safe_globals,
                         register_weights_only_loader,
                         safe_globals,
)
from .torchvision_compat import ensure_torchvision_importable

__all__ = ['CheckpointLoadError', 'CheckpointMismatchError', 'UnsafeCheckpointError', 'check_state_dict',
           'ensure_torchvision_importable', 'load_checkpoint_file', 'load_weights_only', 'model_state_dict',
           'register_safe_globals', 'register_weights_only_loader', 'safe_globals']
