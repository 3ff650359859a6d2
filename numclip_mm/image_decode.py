"""The project's one image decoder: encoded bytes -> BGR uint8, its pixel limit checked from the header first.

Every image the project reads, in training, testing or batch scoring, goes through :func:`decode_bgr`: one decoder,
one channel order (BGR, as mmcv and mmpretrain pipelines expect), one pixel limit checked from the header before
anything is decoded. Training's ``LoadOrdinalImage`` (:mod:`numclip_mm.datasets.transforms`) and
``numclip_mm.inference.decode_image`` (the public RGB entry) use it. Light: OpenCV, PIL and numpy only.
"""
import io
import re
import warnings
from typing import Optional, Tuple

import cv2
import numpy as np
from PIL import Image

from .shared import DEFAULT_MAX_PIXELS


class UnreadableImageError(ValueError):
    """An image that is missing or cannot be decoded; datasets with ``skip_unreadable`` catch it."""


class ImageTooLargeError(UnreadableImageError):
    """An image whose header declares more pixels than the limit; refused before decoding."""


def image_size_from_header(content: bytes, where: str, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS
                           ) -> Tuple[int, int]:
    """(width, height) read from the header only (PIL reads the size lazily), checked against ``max_pixels``.

    Raises :class:`ImageTooLargeError` above the limit (also when PIL's own bomb guard, 2 x
    ``Image.MAX_IMAGE_PIXELS``, fires first) and :class:`UnreadableImageError` when no header can be read.
    """
    return _read_header(content, where, max_pixels)[:2]


def _read_header(content: bytes, where: str, max_pixels: Optional[int]) -> Tuple[int, int, str]:
    """(width, height, PIL's format name) from the header, checked as :func:`image_size_from_header` says."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content)) as img:
                width, height = img.size
                fmt = img.format or 'unknown'
    except Image.DecompressionBombError as err:  # the pixel count is only in PIL's message
        found = re.search(r'\((\d+) pixels\)', str(err))
        claimed = f'{found.group(1)} pixels' if found else 'more pixels than PIL allows'
        raise ImageTooLargeError(f'{where}: image too large: {claimed} exceeds the pixel limit '
                                 f'max_pixels={max_pixels} or PIL\'s bomb guard (checked from the header, nothing '
                                 f'was decoded)') from err
    except Image.UnidentifiedImageError as err:  # its text names a BytesIO's address: not reproducible
        raise UnreadableImageError(f'{where}: cannot decode image, no readable header (not an image format PIL '
                                   f'can identify)') from err
    except Exception as err:  # truncated headers, ...
        raise UnreadableImageError(f'{where}: cannot decode image, no readable header '
                                   f'({type(err).__name__}: {err})') from err
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(f'{where}: image too large: {width}x{height} = {width * height} pixels exceeds the '
                                 f'pixel limit max_pixels={max_pixels} (checked from the header, nothing was '
                                 f'decoded)')
    return width, height, fmt


# The formats OpenCV's imdecode reads (a PIL format name outside this set is refused with that reason); libpng, as
# OpenCV builds it, refuses any PNG chunk over 8 MB (a huge iTXt/zTXt text chunk, even before the pixels).
CV2_FORMATS = frozenset({'JPEG', 'PNG', 'BMP', 'DIB', 'TIFF', 'WEBP', 'PPM', 'JPEG2000', 'SUN', 'HDR', 'PFM'})
LIBPNG_CHUNK_LIMIT = 8_000_000


def _png_chunk_over_limit(content: bytes) -> Optional[Tuple[str, int]]:
    """(type, length) of the first PNG chunk longer than libpng's limit, walking chunk headers only."""
    pos = 8
    while pos + 8 <= len(content):
        length = int.from_bytes(content[pos:pos + 4], 'big')
        kind = content[pos + 4:pos + 8].decode('latin-1')
        if length > LIBPNG_CHUNK_LIMIT:
            return kind, length
        if kind == 'IEND':
            return None
        pos += 12 + length
    return None


def _why_undecodable(content: bytes, fmt: str, backend: str) -> str:
    """The reason a decoder returned nothing for an image whose header PIL did read."""
    if backend == 'cv2' and fmt not in CV2_FORMATS:
        return f'{fmt} is not a format the cv2 decoder reads (convert it to PNG or JPEG)'
    if fmt == 'PNG':
        big = _png_chunk_over_limit(content)
        if big is not None:
            return (f'a PNG {big[0]} chunk of {big[1]} bytes exceeds libpng\'s {LIBPNG_CHUNK_LIMIT}-byte chunk '
                    f'limit')
    return f'the {backend} decoder rejected this {fmt} data (corrupt, truncated or an unsupported variant)'


def decode_bgr(content: Optional[bytes], where: str, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
               backend: str = 'cv2') -> np.ndarray:
    """Encoded bytes -> HxWx3 uint8 BGR image, or :class:`UnreadableImageError` naming ``where``.

    The header is checked against ``max_pixels`` (None: no limit) before decoding, so memory stays bounded whatever
    the file claims to be. Formats PIL cannot read a header of are refused.
    """
    if content is None or len(content) == 0:
        raise UnreadableImageError(f'{where}: empty image')
    content = bytes(content)
    fmt = _read_header(content, where, max_pixels)[2]
    try:
        if backend == 'cv2':  # what mmcv.imfrombytes does for this backend, without importing mmcv
            img = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)
        else:
            import mmcv
            img = mmcv.imfrombytes(content, flag='color', channel_order='bgr', backend=backend)
    except Exception as err:  # decoders raise many types (cv2.error, PIL.UnidentifiedImageError, ...)
        raise UnreadableImageError(f'{where}: cannot decode image ({type(err).__name__}: {err})') from err
    if img is None or img.ndim != 3 or img.size == 0:
        raise UnreadableImageError(f'{where}: cannot decode image: {_why_undecodable(content, fmt, backend)}')
    return img
