"""Image loading for ordinal datasets: the transform that reads a sample's image with the project's one decoder
(:func:`numclip_mm.image_decode.decode_bgr`)."""
from typing import Optional

import mmengine.fileio as fileio
import numpy as np
from mmcv.transforms import BaseTransform
from mmpretrain.registry import TRANSFORMS

from ..image_decode import ImageTooLargeError, UnreadableImageError, decode_bgr, image_size_from_header  # noqa: F401
from ..shared import DEFAULT_MAX_PIXELS


def read_image_bgr(path: str, where: str, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                   backend: str = 'cv2') -> np.ndarray:
    """Read ``path`` with mmengine's file backends (local or remote) and decode it with :func:`decode_bgr`."""
    try:
        content = fileio.get(path)
    except FileNotFoundError as err:
        raise UnreadableImageError(f'{where}: image file not found: {path}') from err
    except Exception as err:
        raise UnreadableImageError(f'{where}: cannot read {path} ({type(err).__name__}: {err})') from err
    return decode_bgr(content, f'{where} ({path})', max_pixels, backend)


def load_sample_bgr(sample: dict, where: str, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                    backend: str = 'cv2') -> np.ndarray:
    """A sample's image from its first source present: ``img`` (passed through), ``img_bytes`` (decoded) or
    ``img_path`` (read with mmengine's file backends). KeyError when it has none."""
    if sample.get('img') is not None:
        return sample['img']
    if 'img_bytes' in sample:
        return decode_bgr(sample['img_bytes'], where, max_pixels, backend)
    if sample.get('img_path') is not None:
        return read_image_bgr(sample['img_path'], where, max_pixels, backend)
    raise KeyError(f'{where}: LoadOrdinalImage needs one of img, img_bytes or img_path')


@TRANSFORMS.register_module()
class LoadOrdinalImage(BaseTransform):
    """Load ``results['img']`` as HxWx3 uint8 BGR, like mmpretrain's ``LoadImageFromFile``.

    Sources, first present wins: an existing ``img`` (generated data, passed through), ``img_bytes`` (decoded),
    ``img_path`` (read with mmengine's file backends, so remote paths work too).

    Required keys: one of ``img``, ``img_bytes``, ``img_path``. Added keys: ``img``, ``img_shape``, ``ori_shape``.

    Args:
        to_float32 (bool): return a float32 image.
        imdecode_backend (str): 'cv2' or 'pillow'.
        drop_bytes (bool): remove ``img_bytes`` after decoding to save memory down the pipeline.
        max_pixels (int, optional): refuse images whose header declares more pixels (None: no limit).
    """

    def __init__(self, to_float32: bool = False, imdecode_backend: str = 'cv2', drop_bytes: bool = True,
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS):
        self.to_float32 = to_float32
        self.max_pixels = max_pixels
        self.imdecode_backend = imdecode_backend
        self.drop_bytes = drop_bytes

    def transform(self, results: dict) -> dict:
        where = f'sample {results.get("sample_idx", "?")}'
        decoded_bytes = results.get('img') is None and 'img_bytes' in results
        img = load_sample_bgr(results, where, self.max_pixels, self.imdecode_backend)
        if decoded_bytes and self.drop_bytes:
            results.pop('img_bytes')
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(to_float32={self.to_float32}, '
                f'imdecode_backend={self.imdecode_backend!r}, drop_bytes={self.drop_bytes}, '
                f'max_pixels={self.max_pixels})')
