"""Register every numclip-mm component into mmpretrain's registries: import this module.

What configs name (``custom_imports = dict(imports=['numclip_mm.register'], allow_failed_imports=False)``, in
``configs/_base_/default_runtime.py``) and what the tools import first. The process-wide effects that come with it
are listed in :mod:`numclip_mm._setup`.
"""
from ._setup import register_all_modules

register_all_modules()

__all__ = ['register_all_modules']
