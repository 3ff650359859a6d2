"""Weights-only checkpoint loading for MMEngine checkpoints, and strict key/shape checks with clear errors.

torch >= 2.6 loads with ``weights_only=True`` by default, and MMEngine's checkpoints carry a few non-tensor
objects: the message hub's ``HistoryBuffer``s and the numpy arrays/scalars inside them. Rather than falling back to
``weights_only=False`` (which would execute arbitrary pickled code), we allow-list exactly those globals.

A plain pickled ``HistoryBuffer`` also refers to ``getattr`` (for its statistics methods), which must never be
allow-listed. So numclip_mm registers a reducer that pickles a buffer as its three fields and rebuilds it with
:func:`rebuild_history_buffer`, the one function we allow. Checkpoints written by a process that imported
numclip_mm (every tools/ script) load weights-only; others raise torch's clear "Weights only load failed".
"""
import copyreg
from typing import Dict

import numpy as np
import torch


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose keys or shapes do not fit the model it is loaded into."""


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


def load_weights_only(path, map_location='cpu'):
    """``torch.load`` with weights-only unpickling and the allow-list, whatever torch's default is."""
    with torch.serialization.safe_globals(safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def check_state_dict(model: torch.nn.Module, state: Dict[str, torch.Tensor], path: str) -> None:
    """Raise :class:`CheckpointMismatchError` naming the file and the offending keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}'
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        def head(items):
            return f'{items[:8]}{" ..." if len(items) > 8 else ""} ({len(items)})'
        raise CheckpointMismatchError(
            f'checkpoint {path} does not fit the model: missing keys {head(missing)}, unexpected keys '
            f'{head(unexpected)}, shape mismatches {head(shapes)}')
