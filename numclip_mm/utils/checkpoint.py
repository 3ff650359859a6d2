"""Weights-only checkpoint loading for MMEngine checkpoints, and strict key/shape checks with clear errors.

torch >= 2.6 loads with ``weights_only=True`` by default, and MMEngine's checkpoints carry a few non-tensor
objects: the message hub's ``HistoryBuffer``s and the numpy arrays/scalars inside them. Rather than falling back to
``weights_only=False`` (which would execute arbitrary pickled code), we allow-list exactly those globals.

A plain pickled ``HistoryBuffer`` also refers to ``getattr`` (for its statistics methods), which must never be
allow-listed. So numclip_mm registers a reducer that pickles a buffer as its three fields and rebuilds it with
:func:`rebuild_history_buffer`, the one function we allow. Checkpoints written by a process that imported
numclip_mm (every tools/ script) load weights-only; others raise torch's clear "Weights only load failed".

Every load passes ``weights_only=True`` explicitly, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (which only changes
calls that leave ``weights_only`` unset) cannot weaken it. MMEngine's own ``CheckpointLoader`` leaves it unset, so
:func:`register_weights_only_loader` replaces its loaders for local files, http(s) and s3/petrel URLs (the
``Runner``'s ``load_from``/``resume``, ``init_cfg=dict(type='Pretrained')``) with :func:`load_checkpoint_file`.
MMEngine's model-zoo schemes (``torchvision://``, ``open-mmlab://``, ``mmcls://``, ``pavi://``) are left alone:
nothing in numclip-mm uses them.
"""
import copyreg
import io
import os
import pickle
import re
from typing import Dict, Sequence, Tuple

import numpy as np
import torch


class CheckpointLoadError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, refused by the weights-only loader, or not fitting the model."""


class CheckpointMismatchError(CheckpointLoadError):
    """A checkpoint whose keys or shapes do not fit the model it is loaded into."""


class UnsafeCheckpointError(CheckpointLoadError):
    """A checkpoint that refers to Python objects outside the allow-list (or is no torch file at all)."""


def _numpy_globals():
    """The numpy reconstruction helpers and dtype classes a pickled array or scalar refers to."""
    multiarray = getattr(np, '_core', None) or np.core
    found = [multiarray.multiarray._reconstruct, multiarray.multiarray.scalar, np.ndarray, np.dtype]
    found += [type(np.dtype(t)) for t in ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32',
                                          'uint64', 'float16', 'float32', 'float64', 'complex64', 'complex128')]
    return found


def rebuild_history_buffer(log_history, count_history, max_length):
    """Unpickle a ``HistoryBuffer`` from its fields (arrays and an int): nothing else is executed."""
    from mmengine.logging.history_buffer import HistoryBuffer
    return HistoryBuffer(np.asarray(log_history), np.asarray(count_history), int(max_length))


def _reduce_history_buffer(buffer):
    return rebuild_history_buffer, (buffer._log_history, buffer._count_history, buffer.max_length)


def safe_globals():
    """The explicit allow-list: everything MMEngine writes into a checkpoint besides tensors and builtins."""
    return [rebuild_history_buffer, *_numpy_globals()]


def register_safe_globals() -> None:
    """Pickle ``HistoryBuffer`` through :func:`rebuild_history_buffer` and allow-list :func:`safe_globals` for
    ``torch.load(weights_only=True)`` in this process."""
    from mmengine.logging.history_buffer import HistoryBuffer
    copyreg.pickle(HistoryBuffer, _reduce_history_buffer)
    torch.serialization.add_safe_globals(safe_globals())


def load_weights_only(source, map_location='cpu', name=None, mmap: bool = False):
    """``torch.load`` with weights-only unpickling and the allow-list, whatever torch's default or the environment say.

    ``source`` is a path or a binary file object (``name`` then names it in errors). ``mmap`` (paths only) maps the
    file instead of reading it, so tensors whose bytes are never touched (a key/shape check) cost no I/O; a legacy
    (non-zip) file cannot be mapped and is read. Raises FileNotFoundError for a missing path and
    :class:`UnsafeCheckpointError` naming the file when the weights-only unpickler refuses it.
    """
    name = name or source
    try:
        if mmap and isinstance(source, (str, os.PathLike)):
            try:
                with torch.serialization.safe_globals(safe_globals()):
                    return torch.load(source, map_location=map_location, weights_only=True, mmap=True)
            except RuntimeError:  # not a zip archive: fall through to reading it
                pass
        if isinstance(source, (str, os.PathLike)):
            # an open file, not the path: torch.load dispatches by file name (".safetensors") otherwise
            with open(source, 'rb') as f, torch.serialization.safe_globals(safe_globals()):
                return torch.load(f, map_location=map_location, weights_only=True)
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = [line for line in str(err).splitlines() if 'Unsupported' in line or 'GLOBAL' in line]
        raise UnsafeCheckpointError(
            f'refusing to load checkpoint {name}: it is not a weights-only torch file '
            f'({(detail or str(err).splitlines() or ["?"])[0].strip()}). numclip-mm never unpickles arbitrary '
            f'objects; re-save the weights (tensors only) with torch.save(model.state_dict(), ...).') from None


def load_checkpoint_file(filename: str, map_location=None):
    """MMEngine ``CheckpointLoader`` scheme: a local file or a URL that ``mmengine.fileio`` can read, weights-only."""
    if '://' not in filename:
        if not os.path.isfile(filename):
            raise FileNotFoundError(f'checkpoint not found: {filename}')
        return load_weights_only(filename, map_location)
    from mmengine.fileio import get
    with io.BytesIO(get(filename)) as buffer:
        return load_weights_only(buffer, map_location, name=filename)


WEIGHTS_ONLY_SCHEMES = ('', 'http://', 'https://', r'(\S+\:)?s3://', r'(\S+\:)?petrel://')


def register_weights_only_loader() -> None:
    """Make MMEngine's ``CheckpointLoader`` read local files and http(s)/s3 URLs with :func:`load_checkpoint_file`."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes=list(WEIGHTS_ONLY_SCHEMES), loader=load_checkpoint_file, force=True)


def model_state_dict(checkpoint, revise_keys: Sequence[Tuple[str, str]] = ((r'^module\.', ''),)):
    """The model weights of a Runner checkpoint (``state_dict`` inside) or of a bare state dict, with MMEngine's
    ``revise_keys`` substitutions (DDP's ``module.`` prefix removed) applied."""
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else checkpoint
    state = {k: v for k, v in state.items() if k != '_metadata'}
    for pattern, replacement in revise_keys:
        state = {re.sub(pattern, replacement, k): v for k, v in state.items()}
    return state


def check_state_dict(model: torch.nn.Module, state: Dict[str, torch.Tensor], path: str) -> None:
    """Raise :class:`CheckpointMismatchError` naming the file and the offending keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}'
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            f'checkpoint {path} does not fit the model: missing keys {first_items(missing)}, unexpected keys '
            f'{first_items(unexpected)}, shape mismatches {first_items(shapes)}')


def first_items(items, shown: int = 8) -> str:
    """The first ``shown`` items of a list and its length, for error messages."""
    return f'{items[:shown]}{" ..." if len(items) > shown else ""} ({len(items)})'
