"""Checkpoint loading, config files and the torchvision shim. Names are resolved on first use, so that
``numclip_mm.utils.config_file`` (what the scorer's up-front checks read a config with) does not import torch."""
import importlib

_SUBMODULE = {
    'CheckpointLoadError': 'checkpoint',
    'CheckpointMismatchError': 'checkpoint',
    'UnsafeCheckpointError': 'checkpoint',
    'check_state_dict': 'checkpoint',
    'load_checkpoint_file': 'checkpoint',
    'load_weights_only': 'checkpoint',
    'model_state_dict': 'checkpoint',
    'register_safe_globals': 'checkpoint',
    'register_weights_only_loader': 'checkpoint',
    'safe_globals': 'checkpoint',
    'ensure_torchvision_importable': 'torchvision_compat',
}

__all__ = sorted(_SUBMODULE)


def __getattr__(name):
    if name not in _SUBMODULE:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'.{_SUBMODULE[name]}', __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULE))
