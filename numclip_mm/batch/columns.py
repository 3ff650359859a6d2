"""Column names and types: the internal columns that travel through the Ray graph, the output columns added to
every input row, and the per-cell fingerprint that ties a prediction to its input row."""
import zlib
from typing import Dict, Optional, Sequence

import numpy as np
import pyarrow as pa

from ..shared import level_key

# internal columns (never written to an output file)
FILE_INDEX = '__numclip_file'     # index of the input file in the job's plan
ROW_INDEX = '__numclip_row'       # row index inside that input file
CELL_CRC = '__numclip_crc'        # CRC-32 of the image/path cell (see cell_crcs)
ROW_ERROR = '__numclip_error'     # decode error of the row (null when the image decoded)
IMAGE_TENSOR = '__numclip_tensor' # decoded CHW uint8 images, one column per input size: f'{IMAGE_TENSOR}{group}'

# output columns: suffix -> Arrow type; the column is named f'{prefix}{suffix}'. As numclip_mm.inference.Predictor:
# value (clamped to the task's range), value_raw (before clamping), label (the concept of the bin value falls in, so
# the two agree by construction) and probability (that bin's), bin_argmax (the most probable bin's concept) and
# bin_argmax_probability (its probability), error (null on success).
VALUE, VALUE_RAW, LABEL, PROBABILITY, ERROR = 'value', 'value_raw', 'label', 'probability', 'error'
BIN_ARGMAX, BIN_ARGMAX_PROBABILITY = 'bin_argmax', 'bin_argmax_probability'
OUTPUT_TYPES: Dict[str, pa.DataType] = {VALUE: pa.float64(), VALUE_RAW: pa.float64(), LABEL: pa.string(),
                                        PROBABILITY: pa.float64(), BIN_ARGMAX: pa.string(),
                                        BIN_ARGMAX_PROBABILITY: pa.float64(), ERROR: pa.string()}
# --embedding: the L2-normalised image embedding (what the head sees), fp16 as NeMo Curator's embedders write it
EMBEDDING = 'embedding'
EMBEDDING_TYPE = pa.list_(pa.float16())

# image cells: how a column's type says where its images are
BYTES, STRUCT, PATH = 'bytes', 'struct', 'path'  # encoded bytes; Hugging Face Image() struct; path or URI


def interval_types(intervals: Sequence[float] = ()) -> Dict[str, pa.DataType]:
    """Suffix -> type of the conformal interval bounds: ``low_<level>``, ``high_<level>`` per level asked."""
    return {f'{side}_{level_key(v)}': pa.float64() for v in intervals for side in ('low', 'high')}


def prediction_types(intervals: Sequence[float] = (), embedding: bool = False) -> Dict[str, pa.DataType]:
    """Every prediction column an inference actor returns for one model (suffix -> type)."""
    return {**OUTPUT_TYPES, **interval_types(intervals), **({EMBEDDING: EMBEDDING_TYPE} if embedding else {})}


def prediction_schema(intervals: Sequence[float] = (), prefixes: Sequence[str] = ('',),
                      embedding: bool = False) -> pa.Schema:
    """What travels from the actors to the driver: the row's tags and, per model prefix, its prediction columns
    (named ``f'{prefix}{suffix}'``)."""
    return pa.schema([(FILE_INDEX, pa.int64()), (ROW_INDEX, pa.int64()), (CELL_CRC, pa.int64())]
                     + [(f'{prefix}{k}', t) for prefix in prefixes
                        for k, t in prediction_types(intervals, embedding).items()])


PREDICTION_SCHEMA = prediction_schema()


def output_columns(prefix: str, keep_raw_value: bool = False, intervals: Sequence[float] = (),
                   embedding: bool = False) -> Dict[str, str]:
    """Suffix -> output column name, e.g. {'value': 'age_value', 'label': 'age_label', ...}.

    ``value`` is clamped to the task's range; ``value_raw`` (the regressor's number) only with ``keep_raw_value``;
    ``low_<level>``/``high_<level>`` (conformal interval bounds, docs/intervals.md) for each level of ``intervals``;
    ``embedding`` (fp16 list, L2-normalised image embedding) with ``embedding``.
    """
    names = {k: f'{prefix}{k}' for k in OUTPUT_TYPES if keep_raw_value or k != VALUE_RAW}
    names.update({k: f'{prefix}{k}' for k in interval_types(intervals)})
    if embedding:
        names[EMBEDDING] = f'{prefix}{EMBEDDING}'
    return names


def _is_bytes(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def is_nested(t: pa.DataType) -> bool:
    """Lists, maps, structs, unions: a cell holding several values (never one image)."""
    return pa.types.is_nested(t)


def image_kind(t: pa.DataType) -> Optional[str]:
    """How a column of type ``t`` holds one image per row: BYTES (binary, large_binary, binary_view), STRUCT
    (Hugging Face ``Image()``: ``struct<bytes: binary, path: string>``, path optional) or PATH (string types);
    None for anything else (numbers, lists of images, other structs)."""
    if _is_bytes(t):
        return BYTES
    if _is_text(t):
        return PATH
    if pa.types.is_struct(t):
        fields = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
        if 'bytes' in fields and _is_bytes(fields['bytes']) and set(fields) <= {'bytes', 'path'} \
                and ('path' not in fields or _is_text(fields['path'])):
            return STRUCT
    return None


_PATH_SEED = zlib.crc32(b'path:')  # a struct cell's path is fingerprinted apart from bytes equal to it


def cell_crcs(column, seed: int = 0) -> np.ndarray:
    """CRC-32 of every cell of a binary or string Arrow column (-1 for null), without copying cells into Python
    objects: each CRC runs over a memoryview slice of the column's data buffer.

    A Hugging Face image struct's cell is fingerprinted by its bytes, or by its path (seeded apart) where the
    bytes are null: whatever the decode step read is what ties the prediction to the row."""
    if isinstance(column, pa.ChunkedArray):
        parts = [cell_crcs(c, seed) for c in column.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if pa.types.is_struct(column.type):
        fields = column.flatten()  # children sliced like the parent, the parent's nulls merged in
        names = [column.type.field(i).name for i in range(column.type.num_fields)]
        crcs = cell_crcs(fields[names.index('bytes')], seed)
        if 'path' in names:
            crcs = np.where(crcs >= 0, crcs, cell_crcs(fields[names.index('path')], _PATH_SEED))
        return crcs
    if pa.types.is_large_binary(column.type) or pa.types.is_large_string(column.type):
        offset_type = np.int64
    elif pa.types.is_binary(column.type) or pa.types.is_string(column.type):
        offset_type = np.int32
    else:  # view types and anything else: cast to a plain layout first
        return cell_crcs(column.cast(pa.large_binary()), seed)
    n = len(column)
    out = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return out
    _, offsets_buf, data_buf = column.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=offset_type, count=n + 1 + column.offset)[column.offset:]
    data = memoryview(data_buf) if data_buf is not None else memoryview(b'')
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    crc32 = zlib.crc32
    starts, ends = offsets[:-1].tolist(), offsets[1:].tolist()
    out[:] = [crc32(data[s:e], seed) if v else -1 for s, e, v in zip(starts, ends, valid.tolist())]
    return out
