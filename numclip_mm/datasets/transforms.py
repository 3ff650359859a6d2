"""Image loading for ordinal datasets: from a file path, from encoded bytes (Parquet catalogs) or already decoded."""
from typing import Optional

import mmcv
import mmengine.fileio as fileio
import numpy as np
from mmcv.transforms import BaseTransform

from mmpretrain.registry import TRANSFORMS


class UnreadableImageError(ValueError):
    """An image that is missing or cannot be decoded; datasets with ``skip_unreadable`` catch it."""


def decode_image(content: Optional[bytes], where: str, backend: str = 'cv2', channel_order: str = 'bgr') -> np.ndarray:
    """Encoded bytes -> HxWx3 uint8 image, or :class:`UnreadableImageError` naming ``where``."""
    if content is None or len(content) == 0:
        raise UnreadableImageError(f'{where}: empty image')
    try:
        img = mmcv.imfrombytes(bytes(content), flag='color', channel_order=channel_order, backend=backend)
    except Exception as err:  # decoders raise many types (cv2.error, PIL.UnidentifiedImageError, ...)
        raise UnreadableImageError(f'{where}: cannot decode image ({type(err).__name__}: {err})') from err
    if img is None or img.ndim != 3 or img.size == 0:
        raise UnreadableImageError(f'{where}: cannot decode image')
    return img


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
    """

    def __init__(self, to_float32: bool = False, imdecode_backend: str = 'cv2', drop_bytes: bool = True):
        self.to_float32 = to_float32
        self.imdecode_backend = imdecode_backend
        self.drop_bytes = drop_bytes

    def transform(self, results: dict) -> dict:
        where = f'sample {results.get("sample_idx", "?")}'
        if results.get('img') is not None:
            img = results['img']
        elif 'img_bytes' in results:
            img = decode_image(results['img_bytes'], where, self.imdecode_backend)
            if self.drop_bytes:
                results.pop('img_bytes')
        elif results.get('img_path') is not None:
            path = results['img_path']
            try:
                content = fileio.get(path)
            except Exception as err:
                raise UnreadableImageError(f'{where}: cannot read {path} ({type(err).__name__}: {err})') from err
            img = decode_image(content, f'{where} ({path})', self.imdecode_backend)
        else:
            raise KeyError(f'{where}: LoadOrdinalImage needs one of img, img_bytes or img_path')
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(to_float32={self.to_float32}, '
                f'imdecode_backend={self.imdecode_backend!r}, drop_bytes={self.drop_bytes})')
