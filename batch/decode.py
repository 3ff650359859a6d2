"""The CPU side of scoring: one cell (image bytes or a path) -> preprocessed CHW uint8 tensor, or an error message.

Bad rows never raise: they get a placeholder tensor and an error message, and the inference stage gives them
null predictions. Every row also gets a fingerprint (CRC-32 of the cell) that the driver compares against the
input file when it writes the output, so a row can never be paired with another row's prediction.
"""
import os
import zlib
from typing import Dict, Optional, Tuple

import numpy as np
import pyarrow as pa

FILE = '__numclip_file'
ROW = '__numclip_row'
FP = '__numclip_fp'
ERROR = '__numclip_error'
TENSOR = '__numclip_tensor'


def fingerprint(cell) -> int:
    """CRC-32 of an image cell (bytes) or a path cell (str); -1 for null."""
    if cell is None:
        return -1
    if isinstance(cell, str):
        cell = cell.encode('utf-8')
    return zlib.crc32(cell)


def fingerprints(column: pa.ChunkedArray) -> np.ndarray:
    return np.fromiter((fingerprint(c) for c in column.to_pylist()), dtype=np.int64, count=len(column))


class ImageReader:
    """Reads a path cell through fsspec (local paths, or any URI fsspec knows), at most ``max_bytes`` + 1 bytes."""

    def __init__(self, path_root: Optional[str] = None):
        self.path_root = path_root
        self._filesystems: Dict[str, object] = {}

    def __call__(self, path: str, max_bytes: Optional[int]) -> bytes:
        import fsspec
        if '://' not in path and self.path_root and not os.path.isabs(path):
            path = os.path.join(self.path_root, path)
        protocol = path.split('://', 1)[0] if '://' in path else 'file'
        fs = self._filesystems.get(protocol)
        if fs is None:
            fs = self._filesystems[protocol] = fsspec.filesystem(protocol)
        try:
            with fs.open(path, 'rb') as f:
                return f.read() if max_bytes is None else f.read(max_bytes + 1)
        except FileNotFoundError:
            raise FileNotFoundError(f'image file not found: {path}') from None
        except IsADirectoryError:
            raise FileNotFoundError(f'image path is a directory: {path}') from None


class Decoder:
    """``map_batches`` callable: a pyarrow batch with the image/path column -> fingerprint, error, tensor.

    Args:
        preprocessor: the model's :class:`numclip_mm.inference.ImagePreprocessor` (picklable).
        column: the column to read; ``mode`` says whether it holds 'bytes' or a 'path'.
        max_bytes: larger images are rejected (row error), not decoded.
        placeholder_shape: CHW shape of the tensor given to rows that fail when no good row in the batch tells it.
        path_root: folder that relative paths are resolved against.
    """

    def __init__(self, preprocessor, column: str, mode: str, max_bytes: Optional[int],
                 placeholder_shape: Tuple[int, ...], path_root: Optional[str] = None):
        if mode not in ('bytes', 'path'):
            raise ValueError(f'mode must be bytes or path, got {mode!r}')
        self.preprocessor = preprocessor
        self.column, self.mode, self.max_bytes = column, mode, max_bytes
        self.placeholder_shape = tuple(placeholder_shape)
        self.reader = ImageReader(path_root)

    def decode_one(self, cell):
        """-> (CHW uint8 numpy array, None) or (None, error message)."""
        from numclip_mm.inference import decode_image
        if cell is None:
            return None, f'null {"image" if self.mode == "bytes" else "path"}'
        try:
            data = cell if self.mode == 'bytes' else self.reader(cell, self.max_bytes)
            if self.max_bytes is not None and len(data) > self.max_bytes:
                return None, f'image too large: more than {self.max_bytes} bytes' if self.mode == 'path' \
                    else f'image too large: {len(data)} bytes > {self.max_bytes}'
            tensor = self.preprocessor(decode_image(data))
            return np.asarray(tensor.numpy() if hasattr(tensor, 'numpy') else tensor, dtype=np.uint8), None
        except (ValueError, OSError) as err:
            return None, str(err) or type(err).__name__
        except Exception as err:  # noqa: BLE001  (a transform failing on one odd image must not stop the job)
            return None, f'{type(err).__name__}: {err}'

    def decode_cells(self, cells) -> pa.Table:
        from ray.data.extensions import ArrowTensorArray
        decoded = [self.decode_one(c) for c in cells]
        good = [t for t, _ in decoded if t is not None]
        shape = good[0].shape if good else self.placeholder_shape
        ragged = any(t.shape != shape for t in good)
        placeholder = np.zeros(shape, dtype=np.uint8)
        tensors = [placeholder if t is None else t for t, _ in decoded]
        if ragged:  # a pipeline without a fixed output size: keep a variable-shaped tensor column
            stacked = np.empty(len(tensors), dtype=object)
            stacked[:] = tensors
        else:
            stacked = np.stack(tensors) if tensors else np.zeros((0, *shape), dtype=np.uint8)
        return pa.table({
            FP: pa.array([fingerprint(c) for c in cells], type=pa.int64()),
            ERROR: pa.array([e for _, e in decoded], type=pa.string()),
            TENSOR: ArrowTensorArray.from_numpy(stacked),
        })


class ReadDecode:
    """``map_batches`` callable over work items ``{file, path, row_group, offset}``: reads that row group's image/path
    column (pyarrow, or fsspec for URIs) and yields decoded slices of ``batch_size`` rows tagged with the file index
    and the row index inside the file, so the driver can put every prediction back exactly where it belongs
    whatever order Ray finishes the work in."""

    def __init__(self, decoder: Decoder, batch_size: int):
        self.decoder, self.batch_size = decoder, batch_size

    def __call__(self, items: Dict[str, np.ndarray]):
        import pyarrow.parquet as pq
        for file_index, path, group, offset in zip(items['file'], items['path'], items['row_group'],
                                                   items['offset']):
            if '://' in path and not path.startswith('file://'):
                import fsspec
                with fsspec.open(path, 'rb') as f:
                    column = pq.ParquetFile(f).read_row_group(int(group), columns=[self.decoder.column]).column(0)
            else:
                column = pq.ParquetFile(path.removeprefix('file://')).read_row_group(
                    int(group), columns=[self.decoder.column]).column(0)
            for start in range(0, len(column), self.batch_size):
                cells = column.slice(start, self.batch_size).to_pylist()
                table = self.decoder.decode_cells(cells)
                n = len(cells)
                rows = np.arange(int(offset) + start, int(offset) + start + n, dtype=np.int64)
                yield table.add_column(0, ROW, pa.array(rows)).add_column(
                    0, FILE, pa.array(np.full(n, int(file_index), dtype=np.int64)))
