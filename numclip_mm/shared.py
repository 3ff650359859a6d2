"""The few definitions both the model side and the scorer's light worker-side modules use, defined once here.

No torch, mmengine or mmpretrain import: the scorer's driver and write tasks (numclip_mm.batch.pipeline, catalog,
columns, decode) import this without paying for the model stack.
"""
import hashlib
from typing import Union

# 64 megapixels: the largest common camera sensors (50-61 Mpx) pass, and one decode peaks at about 370 MB (cv2.imdecode
# holds two BGR copies, 6 bytes per pixel; measured for 8000x8000 WebP, JPEG and PNG); PIL's own bomb warning starts at
# 89 Mpx. A 20000x20000 PNG (1 MB on disk, 1.2 GB decoded) is refused from its header.
# Training (LoadOrdinalImage), inference (decode_image) and scoring (--max-image-pixels) share this one limit.
DEFAULT_MAX_PIXELS = 64_000_000
PRECISION_DTYPES = {'fp32': 'float32', 'fp16': 'float16', 'bf16': 'bfloat16'}  # --precision -> torch dtype name


def level_key(level: float) -> str:
    """The text of a coverage level in calibration keys and column names: 0.9 -> '0.9'."""
    return f'{float(level):g}'


def bytes_digest(data: Union[bytes, bytearray, memoryview]) -> str:
    """sha256 (hex) of bytes in memory."""
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str, chunk: int = 1 << 24) -> str:
    """sha256 (hex) of a file, a local path or any fsspec URI: a checkpoint's identity (its calibration's
    ``checkpoint_sha256``, the ``model`` a scored output records)."""
    h = hashlib.sha256()
    if '://' in str(path):
        import fsspec
        opener = fsspec.open(str(path), 'rb')
    else:
        opener = open(path, 'rb')
    with opener as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
