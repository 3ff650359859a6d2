"""numclip-mm: NumCLIP (ECCV 2024) ordinal regression as an MMPretrain plugin.

Importing the package (or naming it in a config's ``custom_imports``) registers the models, datasets,
transforms and metrics into mmpretrain's registries. Everything else the import changes in the process (a
torchvision fallback where its compiled ops cannot load, weights-only checkpoint pickling, the tiny open_clip model
configs) is listed and explained in :mod:`numclip_mm._setup`.
"""
from . import _setup

_setup.apply_all()  # before the imports below: torchvision must be importable first

from .tasks import TASKS, OrdinalTask, get_task  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ['TASKS', 'OrdinalTask', 'get_task', '__version__']
