"""numclip-mm: NumCLIP (ECCV 2024) ordinal regression as an MMPretrain plugin.

Importing the package (or naming it in a config's ``custom_imports``) registers the models, datasets,
transforms and metrics into mmpretrain's registries.
"""
from .utils.torchvision_compat import ensure_torchvision_importable

ensure_torchvision_importable()  # must run before anything imports torchvision (open_clip, mmpretrain)

from .utils.checkpoint import register_safe_globals, register_weights_only_loader  # noqa: E402

register_safe_globals()
register_weights_only_loader()  # MMEngine's CheckpointLoader: weights-only, whatever the environment says

from . import datasets, engine, evaluation, models  # noqa: E402,F401  (registration side effects)
from .tasks import TASKS, OrdinalTask, get_task  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ['TASKS', 'OrdinalTask', 'get_task', '__version__']
