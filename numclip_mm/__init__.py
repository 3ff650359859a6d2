"""numclip-mm: NumCLIP (ECCV 2024) ordinal regression as an MMPretrain plugin.

``import numclip_mm`` is cheap (no torch, no mmpretrain) and changes nothing in the process: the task table and
the version are all it defines. The components are registered into mmpretrain's registries by importing
:mod:`numclip_mm.register` (a config's ``custom_imports = dict(imports=['numclip_mm.register'])``), by
``numclip_mm.register.register_all_modules()``, or by importing the subpackage that defines them
(``numclip_mm.models``, ``.datasets``, ``.evaluation``, ``.engine``). What that changes in the process besides
registering is listed in :mod:`numclip_mm._setup`.
"""
from .tasks import TASKS, OrdinalTask, get_task
from .version import __version__

__all__ = ['TASKS', 'OrdinalTask', 'get_task', '__version__']
