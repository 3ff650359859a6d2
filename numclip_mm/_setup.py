"""Everything registering numclip-mm changes in the process besides defining its own names, in one place.

``import numclip_mm`` applies none of this. Effects 1-2 (:func:`prepare_runtime`) run when the first component
subpackage (``models``, ``datasets``, ``evaluation``, ``engine``) is imported, effects 3-4 when
:mod:`numclip_mm.register` is (or :func:`register_all_modules` is called). Each effect is needed by some part of
the plugin, runs once, and is recorded in :data:`APPLIED`:

1. ``torchvision_fallback`` (:mod:`numclip_mm.utils.torchvision_compat`): only when torchvision's compiled ops
   cannot load beside the installed torch (a CUDA torchvision wheel next to a CPU torch), define the
   ``torchvision::nms``/``qnms`` op schemas so that ``import torchvision`` (done by open_clip and mmpretrain)
   succeeds. A working torchvision is untouched. Must run before torchvision is first imported.
2. ``checkpoint_pickling`` (:mod:`numclip_mm.utils.checkpoint`): a ``copyreg`` reducer that pickles MMEngine's
   ``HistoryBuffer`` as its fields rebuilt by ``numclip_mm.utils.checkpoint.rebuild_history_buffer``, and that
   function plus numpy's array/scalar helpers added to torch's weights-only allow-list
   (``torch.serialization.add_safe_globals``), so that MMEngine's own ``load_checkpoint``/``--resume`` load
   weights-only; and MMEngine's ``CheckpointLoader`` schemes for local files, http(s) and s3 replaced by ones that
   always pass ``weights_only=True`` (``register_weights_only_loader``), so that no environment variable such as
   ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` can make ``load_from``/``--resume`` unpickle arbitrary code.
   Consequence: a checkpoint written by a process that imported numclip_mm refers to
   ``numclip_mm.utils.checkpoint.rebuild_history_buffer`` in its ``message_hub``; see "Checkpoints" in
   docs/training_and_testing.md.
3. ``open_clip_model_configs`` (:mod:`numclip_mm.models.clip_loader`): the JSON model configs shipped in
   ``numclip_mm/models/model_configs`` (``numclip-tiny``, ``numclip-demo``) are added to open_clip's model table.
4. ``registries``: importing the subpackages registers the models, datasets, transforms, metrics and hooks into
   mmpretrain's registries (what ``custom_imports = dict(imports=['numclip_mm.register'])`` in a config relies on).
"""
from typing import Dict

APPLIED: Dict[str, bool] = {}


def prepare_torchvision() -> None:
    """Effect 1; call before anything imports torchvision."""
    if 'torchvision_fallback' in APPLIED:
        return
    from .utils.torchvision_compat import ensure_torchvision_importable
    APPLIED['torchvision_fallback'] = ensure_torchvision_importable()


def prepare_checkpoint_pickling() -> None:
    """Effect 2."""
    if APPLIED.get('checkpoint_pickling'):
        return
    from .utils.checkpoint import register_safe_globals, register_weights_only_loader
    register_safe_globals()
    register_weights_only_loader()
    APPLIED['checkpoint_pickling'] = True


def prepare_runtime() -> None:
    """Effects 1-2: what every component subpackage needs before its first import of mmpretrain/open_clip."""
    prepare_torchvision()
    prepare_checkpoint_pickling()


def register_components() -> None:
    """Effects 3 and 4: import the subpackages (their modules register themselves)."""
    from . import datasets, engine, evaluation, models  # noqa: F401
    APPLIED['open_clip_model_configs'] = True
    APPLIED['registries'] = True


def register_all_modules() -> None:
    """Effects 1-4, in the order they need (mmpretrain's ``register_all_modules`` convention); idempotent."""
    if APPLIED.get('registries'):
        return
    prepare_runtime()
    register_components()
