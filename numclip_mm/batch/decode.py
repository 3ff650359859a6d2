"""The decode step: an image/path cell -> one CHW uint8 array per distinct model input, or a row error.

Bad rows never raise: they get an error message (and a zero placeholder tensor), and the inference step gives them
null predictions. The size a cell claims is checked from the image header before any pixel is decoded (a 1 MB PNG
can claim 20000 x 20000 pixels, 1.2 GB decoded), so a decode worker's memory stays bounded.
"""
import json
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from ..shared import DEFAULT_MAX_PIXELS
from . import catalog
from .columns import BYTES, CELL_CRC, FILE_INDEX, IMAGE_TENSOR, PATH, ROW_ERROR, ROW_INDEX, STRUCT, cell_crcs
from .errortext import error_text, shown_cell


def preprocessor_key(preprocessor) -> str:
    """What makes two models' inputs identical: input size and test pipeline (models sharing it share a decode)."""
    return json.dumps([getattr(preprocessor, 'input_size', None), getattr(preprocessor, 'pipeline_cfg', None)],
                      sort_keys=True, default=str)


def group_preprocessors(preprocessors: Sequence) -> Tuple[list, List[int]]:
    """(the distinct preprocessors in first-seen order, the group index of each model): each image is read and
    decoded once per cell and brought to each distinct input once, however many models share it."""
    keys, unique, index = {}, [], []
    for p in preprocessors:
        key = preprocessor_key(p)
        if key not in keys:
            keys[key] = len(unique)
            unique.append(p)
        index.append(keys[key])
    return unique, index


class CellDecoder:
    """One cell -> (one CHW uint8 array per preprocessor, None) or (None, error message).

    The cell is read and its pixels decoded once; each preprocessor (one per distinct model input, see
    :func:`group_preprocessors`) then brings the decoded image to its own input.

    Args:
        preprocessors: the models' :class:`numclip_mm.inference.ImagePreprocessor` s (``input_size`` set, so that
            every image leaves at the model's input size).
        mode: 'bytes' (the cell holds the encoded image), 'struct' (a Hugging Face image ``{bytes, path}``: the
            bytes, else the path) or 'path' (a local path or URI, see :class:`numclip_mm.batch.catalog.ImageReader`).
        max_bytes: larger images get an error, unread past ``max_bytes + 1`` (None: no limit).
        max_pixels: images whose header claims more pixels get an error, undecoded.
        path_root: folder that relative paths are resolved against, and that no local path may leave.
        cwd: folder that relative paths are resolved against without ``path_root``.
        read_timeout: seconds for the whole read of a URI.

    Error texts name the cause, redacted and at most ``errortext.MAX_ERROR_CHARS`` characters (see
    :mod:`numclip_mm.batch.errortext`).
    """

    def __init__(self, preprocessors: Optional[Sequence], mode: str,
                 max_bytes: Optional[int] = catalog.DEFAULT_MAX_IMAGE_BYTES,
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, path_root: Optional[str] = None,
                 cwd: Optional[str] = None, read_timeout: float = catalog.DEFAULT_READ_TIMEOUT_S):
        if mode not in (BYTES, STRUCT, PATH):
            raise ValueError(f'mode must be {BYTES}, {STRUCT} or {PATH}, got {mode!r}')
        self.preprocessors, self.mode = preprocessors, mode
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self.reader = catalog.ImageReader(path_root, cwd, read_timeout)

    def output_shapes(self) -> List[Optional[Tuple[int, int, int]]]:
        sizes = [getattr(p, 'input_size', None) for p in self.preprocessors]
        return [(3, *size) if size else None for size in sizes]

    def _read(self, cell) -> Tuple[Optional[bytes], bool, Optional[str]]:
        """(encoded bytes, whether they were read from a path, or an error)."""
        if cell is None:
            return None, False, f'null {"path" if self.mode == PATH else "image"}'
        if self.mode == BYTES:
            return cell, False, None
        if self.mode == STRUCT:
            if cell.get('bytes') is not None:
                return cell['bytes'], False, None
            cell = cell.get('path')
            if cell is None:
                return None, False, 'null image (no bytes and no path)'
        return self.reader(cell, self.max_bytes), True, None

    def __call__(self, cell):
        try:
            data, from_path, error = self._read(cell)
            if error is not None:
                return None, error
            if self.max_bytes is not None and len(data) > self.max_bytes:
                where = cell.get('path') if self.mode == STRUCT and isinstance(cell, dict) else cell
                return None, (f'image too large: more than {self.max_bytes} bytes (--max-image-bytes): '
                              f'{shown_cell(where)}' if from_path
                              else f'image too large: {len(data)} bytes > {self.max_bytes} (--max-image-bytes)')
            # the header is checked against max_pixels before any pixel is decoded (ImageTooLargeError)
            first = self.preprocessors[0]
            bgr = first.decode(data, max_pixels=self.max_pixels)
            tensors = [p.from_bgr(bgr) for p in self.preprocessors]
            return [np.asarray(t.numpy() if hasattr(t, 'numpy') else t, dtype=np.uint8) for t in tensors], None
        except (ValueError, OSError) as err:
            return None, error_text(str(err) or type(err).__name__)
        except Exception as err:  # noqa: BLE001  (a transform failing on one odd image must not stop the job)
            return None, error_text(f'{type(err).__name__}: {err}')

    def decode_many(self, cells: Sequence) -> Tuple[List[np.ndarray], List[Optional[str]]]:
        """-> (per preprocessor: tensors stacked (N, C, H, W), or an object array when sizes differ; per-row error
        or None)."""
        decoded = [self(c) for c in cells]
        stacks = []
        for g, declared in enumerate(self.output_shapes()):
            good = [t[g] for t, _ in decoded if t is not None]
            shape = good[0].shape if good else (declared or (3, 1, 1))
            placeholder = np.zeros(shape, dtype=np.uint8)
            tensors = [placeholder if t is None else t[g] for t, _ in decoded]
            if any(t.shape != shape for t in tensors):  # only when the model does not say its input size
                stacked = np.empty(len(tensors), dtype=object)
                stacked[:] = tensors
            else:
                stacked = np.stack(tensors) if tensors else np.zeros((0, *shape), dtype=np.uint8)
            stacks.append(stacked)
        return stacks, [e for _, e in decoded]


class RowGroupDecoder:
    """Reads the image/path column of one (file, row group) work item and decodes it in slices of ``batch_size``
    rows, each tagged with the file index, the row index inside the file and the CRC of every cell, so that a
    prediction can only ever be written next to its own input row."""

    def __init__(self, decoder: CellDecoder, column: str, batch_size: int, first_batch: Optional[int] = None):
        self.decoder, self.column, self.batch_size = decoder, column, batch_size
        # the size of this decoder's very first batch (None: batch_size): the in-process engine's first predictions
        # then come after a few images, not after a whole batch of a slow model (~35 s for ViT-B/16 on one core)
        self.first_batch = first_batch

    def slices(self, file_index: int, uri: str, row_group: int, offset: int, start: int = 0,
               stop: Optional[int] = None
               ) -> Iterator[Tuple[np.ndarray, np.ndarray, List[Optional[str]], List[np.ndarray]]]:
        """-> (row indices, CRCs, errors, tensors per preprocessor) per batch of rows ``start:stop`` of the row
        group (``offset``: its first row's index in the file)."""
        column = catalog.read_row_group_column(uri, row_group, self.column)
        stop = len(column) if stop is None else min(int(stop), len(column))
        first = int(start)
        while first < stop:
            size = min(self.first_batch or self.batch_size, self.batch_size)
            self.first_batch = None
            part = column.slice(first, min(size, stop - first))
            tensors, errors = self.decoder.decode_many(part.to_pylist())
            rows = np.arange(offset + first, offset + first + len(part), dtype=np.int64)
            yield rows, cell_crcs(part), errors, tensors
            first += len(part)

    def __call__(self, items):
        """``map_batches`` callable over work items ``{file, path, row_group, offset}`` -> decoded tables."""
        from ray.data.extensions import ArrowTensorArray
        for file_index, uri, group, offset, start, stop in zip(items['file'], items['path'], items['row_group'],
                                                                items['offset'], items['start'], items['stop']):
            for rows, crcs, errors, tensors in self.slices(int(file_index), str(uri), int(group), int(offset),
                                                           int(start), int(stop)):
                yield pa.table({FILE_INDEX: pa.array(np.full(len(rows), int(file_index), dtype=np.int64)),
                                ROW_INDEX: pa.array(rows), CELL_CRC: pa.array(crcs),
                                ROW_ERROR: pa.array(errors, type=pa.string()),
                                **{f'{IMAGE_TENSOR}{g}': ArrowTensorArray.from_numpy(t)
                                   for g, t in enumerate(tensors)}})
