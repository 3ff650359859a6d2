"""The decode step: an image/path cell -> a CHW uint8 array at the model's input size, or a row error.

Bad rows never raise: they get an error message (and a zero placeholder tensor), and the inference step gives them
null predictions. The size a cell claims is checked from the image header before any pixel is decoded (a 1 MB PNG
can claim 20000 x 20000 pixels, 1.2 GB decoded), so a decode worker's memory stays bounded.
"""
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from ..shared import DEFAULT_MAX_PIXELS
from . import catalog
from .columns import CELL_CRC, FILE_INDEX, IMAGE_TENSOR, ROW_ERROR, ROW_INDEX, cell_crcs
from .errortext import error_text, shown_cell


class CellDecoder:
    """One cell -> (CHW uint8 array, None) or (None, error message).

    Args:
        preprocessor: the model's :class:`numclip_mm.inference.ImagePreprocessor` (its ``input_size`` set, so that
            every image leaves at the model's input size).
        mode: 'bytes' (the cell holds the encoded image) or 'path' (a local path or URI, see
            :class:`numclip_mm.batch.catalog.ImageReader`).
        max_bytes: larger images get an error, unread past ``max_bytes + 1`` (None: no limit).
        max_pixels: images whose header claims more pixels get an error, undecoded.
        path_root: folder that relative paths are resolved against, and that no local path may leave.
        cwd: folder that relative paths are resolved against without ``path_root``.
        read_timeout: seconds for the whole read of a URI.

    Error texts name the cause, redacted and at most ``errortext.MAX_ERROR_CHARS`` characters (see
    :mod:`numclip_mm.batch.errortext`).
    """

    def __init__(self, preprocessor, mode: str, max_bytes: Optional[int] = catalog.DEFAULT_MAX_IMAGE_BYTES,
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, path_root: Optional[str] = None,
                 cwd: Optional[str] = None, read_timeout: float = catalog.DEFAULT_READ_TIMEOUT_S):
        if mode not in ('bytes', 'path'):
            raise ValueError(f'mode must be bytes or path, got {mode!r}')
        self.preprocessor, self.mode = preprocessor, mode
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self.reader = catalog.ImageReader(path_root, cwd, read_timeout)

    @property
    def output_shape(self) -> Optional[Tuple[int, int, int]]:
        size = getattr(self.preprocessor, 'input_size', None)
        return (3, *size) if size else None

    def __call__(self, cell):
        if cell is None:
            return None, f'null {"image" if self.mode == "bytes" else "path"}'
        try:
            data = cell if self.mode == 'bytes' else self.reader(cell, self.max_bytes)
            if self.max_bytes is not None and len(data) > self.max_bytes:
                return None, (f'image too large: more than {self.max_bytes} bytes (--max-image-bytes): '
                              f'{shown_cell(cell)}' if self.mode == 'path'
                              else f'image too large: {len(data)} bytes > {self.max_bytes} (--max-image-bytes)')
            # the header is checked against max_pixels before any pixel is decoded (ImageTooLargeError)
            tensor = self.preprocessor.from_bytes(data, max_pixels=self.max_pixels)
            return np.asarray(tensor.numpy() if hasattr(tensor, 'numpy') else tensor, dtype=np.uint8), None
        except (ValueError, OSError) as err:
            return None, error_text(str(err) or type(err).__name__)
        except Exception as err:  # noqa: BLE001  (a transform failing on one odd image must not stop the job)
            return None, error_text(f'{type(err).__name__}: {err}')

    def decode_many(self, cells: Sequence) -> Tuple[np.ndarray, List[Optional[str]]]:
        """-> (tensors stacked (N, C, H, W), or an object array when sizes differ; per-row error or None)."""
        decoded = [self(c) for c in cells]
        good = [t for t, _ in decoded if t is not None]
        shape = good[0].shape if good else (self.output_shape or (3, 1, 1))
        placeholder = np.zeros(shape, dtype=np.uint8)
        tensors = [placeholder if t is None else t for t, _ in decoded]
        if any(t.shape != shape for t in tensors):  # only when the model does not say its input size
            stacked = np.empty(len(tensors), dtype=object)
            stacked[:] = tensors
        else:
            stacked = np.stack(tensors) if tensors else np.zeros((0, *shape), dtype=np.uint8)
        return stacked, [e for _, e in decoded]


class RowGroupDecoder:
    """Reads the image/path column of one (file, row group) work item and decodes it in slices of ``batch_size``
    rows, each tagged with the file index, the row index inside the file and the CRC of every cell, so that a
    prediction can only ever be written next to its own input row."""

    def __init__(self, decoder: CellDecoder, column: str, batch_size: int):
        self.decoder, self.column, self.batch_size = decoder, column, batch_size

    def slices(self, file_index: int, uri: str, row_group: int, offset: int
               ) -> Iterator[Tuple[np.ndarray, np.ndarray, List[Optional[str]], np.ndarray]]:
        """-> (row indices, CRCs, errors, tensors) per slice."""
        column = catalog.read_row_group_column(uri, row_group, self.column)
        for start in range(0, len(column), self.batch_size):
            part = column.slice(start, self.batch_size)
            tensors, errors = self.decoder.decode_many(part.to_pylist())
            rows = np.arange(offset + start, offset + start + len(part), dtype=np.int64)
            yield rows, cell_crcs(part), errors, tensors

    def __call__(self, items):
        """``map_batches`` callable over work items ``{file, path, row_group, offset}`` -> decoded tables."""
        from ray.data.extensions import ArrowTensorArray
        for file_index, uri, group, offset in zip(items['file'], items['path'], items['row_group'],
                                                  items['offset']):
            for rows, crcs, errors, tensors in self.slices(int(file_index), str(uri), int(group), int(offset)):
                yield pa.table({FILE_INDEX: pa.array(np.full(len(rows), int(file_index), dtype=np.int64)),
                                ROW_INDEX: pa.array(rows), CELL_CRC: pa.array(crcs),
                                ROW_ERROR: pa.array(errors, type=pa.string()),
                                IMAGE_TENSOR: ArrowTensorArray.from_numpy(tensors)})
