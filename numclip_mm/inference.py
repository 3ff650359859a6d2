"""One small predictor API: config + checkpoint -> model; ``predict(images)`` -> columns.

Used by ``batch/`` (the Ray scorer) and any other inference code; it never touches training code paths.
The work is split in two picklable halves so a pipeline can run them in different processes:
:class:`ImagePreprocessor` (decode-side, CPU: the config's test transforms) and :class:`Predictor` (the model,
with text prototypes cached after the first batch).
"""
import os
from typing import Dict, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose

from .datasets.transforms import DEFAULT_MAX_PIXELS, decode_bgr
from .evaluation.conformal import CalibrationLike, check_checkpoint, find_calibration, get_calibration, level_key
from .models.heads import OrdinalHead
from .tasks import OrdinalTask
from .utils.checkpoint import CheckpointMismatchError, check_state_dict, load_weights_only

__all__ = ['CheckpointMismatchError', 'ImagePreprocessor', 'Predictor', 'decode_image', 'load_config',
           'load_model_checkpoint']

ConfigLike = Union[str, Config]
_LOADERS = ('LoadImageFromFile', 'LoadOrdinalImage')


def load_config(config: ConfigLike) -> Config:
    """A config (path or object) with numclip_mm registered and its default scope set."""
    if not isinstance(config, Config) and not os.path.isfile(config):
        raise FileNotFoundError(f'config not found: {config}')
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    import numclip_mm  # noqa: F401  (registration; configs name our components)
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    return cfg


def decode_image(data: bytes, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> RGB uint8 (H, W, 3): the public RGB entry over the project's one decoder
    (:func:`numclip_mm.datasets.decode_bgr`, also used by training's ``LoadOrdinalImage``).

    Raises ValueError ('empty image', 'cannot decode image ...', or 'exceeds the pixel limit' when the header
    declares more than ``max_pixels`` pixels; None: no limit) without decoding oversized images.
    """
    bgr = decode_bgr(data, 'input', max_pixels)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)  # the one channel conversion, in place


class ImagePreprocessor:
    """The config's test pipeline minus its loading step: RGB uint8 (H, W, 3) or encoded bytes -> CHW uint8 tensor.

    mmpretrain pipelines work in BGR (the data preprocessor's ``to_rgb`` flips it back): :meth:`from_bytes` decodes
    straight to BGR, so bytes are never converted twice; ``__call__`` takes RGB (the public order) and flips once.
    """

    def __init__(self, config: ConfigLike):
        cfg = load_config(config)
        steps = [t for t in cfg.test_dataloader.dataset.pipeline if t['type'] not in _LOADERS]
        self.pipeline_cfg = steps
        self._pipeline = Compose(steps)

    def __call__(self, image_rgb: np.ndarray) -> torch.Tensor:
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
            raise ValueError(f'expected an RGB image (H, W, 3), got shape {image_rgb.shape}')
        return self._run(np.ascontiguousarray(image_rgb[..., ::-1]))

    def from_bytes(self, data: bytes, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> torch.Tensor:
        """Encoded image bytes -> CHW uint8 tensor (ValueError as :func:`decode_image`)."""
        return self._run(decode_bgr(data, 'input', max_pixels))

    def _run(self, bgr: np.ndarray) -> torch.Tensor:
        results = self._pipeline(dict(img=bgr, img_shape=bgr.shape[:2], ori_shape=bgr.shape[:2]))
        return results['inputs']

    def __getstate__(self):
        return dict(pipeline_cfg=self.pipeline_cfg)

    def __setstate__(self, state):
        import numclip_mm  # noqa: F401
        from mmengine.registry import init_default_scope
        init_default_scope('mmpretrain')
        self.pipeline_cfg = state['pipeline_cfg']
        self._pipeline = Compose(self.pipeline_cfg)


class Predictor:
    """A trained ordinal model ready for batched inference.

    Args:
        config: config path or :class:`Config` the model was trained with.
        checkpoint: a checkpoint saved by the Runner (or a bare state dict); None keeps the config's weights
            (zero-shot). Loaded weights-only with numclip_mm's allow-list; a checkpoint that does not fit the config
            raises ``CheckpointMismatchError`` naming the keys.
        device: 'cpu', 'cuda', 'cuda:1', ...
        calibration: conformal calibration for prediction intervals (docs/intervals.md); by default the
            ``<checkpoint>.calibration.json`` sidecar written by tools/calibrate.py when it exists, else none.
    """

    def __init__(self, config: ConfigLike, checkpoint: Optional[str] = None, device: str = 'cpu',
                 calibration: Optional[CalibrationLike] = None):
        from mmpretrain.registry import MODELS
        cfg = load_config(config)
        self.model = MODELS.build(cfg.model)
        if checkpoint is not None:
            load_model_checkpoint(self.model, checkpoint)
        self.model.to(device).eval()
        self.device = torch.device(device)
        if not isinstance(self.model.head, OrdinalHead):
            raise TypeError(f'{type(self.model.head).__name__} is not an OrdinalHead: the predictor needs its task '
                            f'and predict_arrays')
        self.task: OrdinalTask = self.model.head.task
        self.concepts = np.asarray(self.task.concepts, dtype=object)
        self.preprocessor = ImagePreprocessor(cfg)
        self.calibration = get_calibration(calibration or find_calibration(checkpoint))
        if self.calibration is not None and calibration is None:
            check_checkpoint(self.calibration, checkpoint)

    def check_intervals(self, levels: Sequence[float]) -> None:
        """Raise a clear error now (not mid-pipeline) if intervals at ``levels`` cannot be produced."""
        levels = tuple(levels)
        if levels and self.calibration is None:
            raise ValueError(f'prediction intervals {[level_key(v) for v in levels]} asked, but the checkpoint has '
                             'no conformal calibration: run tools/calibrate.py CONFIG CHECKPOINT --coverage '
                             f'{" ".join(level_key(v) for v in levels)} (writes <checkpoint>.calibration.json)')
        for level in levels:
            self.calibration.threshold(level)

    @torch.no_grad()
    def predict_tensors(self, inputs: Union[torch.Tensor, Sequence[torch.Tensor]],
                        intervals: Sequence[float] = ()) -> Dict[str, np.ndarray]:
        """Preprocessed CHW uint8 tensors (a list or a stacked batch) -> prediction columns; plus ``low_<level>``
        and ``high_<level>`` (conformal interval bounds) for each level of ``intervals``."""
        intervals = tuple(intervals)
        self.check_intervals(intervals)
        data = self.model.data_preprocessor(dict(inputs=inputs), False)
        head: OrdinalHead = self.model.head
        probs, raw = head.predict_arrays(self.model.extract_feat(data['inputs']))
        values = head.to_task_range(raw)
        probs, values, raw = (t.float().cpu().numpy() for t in (probs, values, raw))
        index = probs.argmax(axis=1)
        out = dict(value=values, value_raw=raw, label=self.concepts[index], label_index=index,
                   probability=probs[np.arange(len(index)), index])
        if intervals:
            for key, (low, high) in self.calibration.intervals(values, probs, intervals).items():
                out[f'low_{key}'], out[f'high_{key}'] = low, high
        return out

    def predict(self, images: Sequence[Union[np.ndarray, bytes]], intervals: Sequence[float] = ()
                ) -> Dict[str, np.ndarray]:
        """RGB uint8 arrays (or encoded image bytes) -> columns ``value`` (clamped to the task's range, see
        :class:`OrdinalHead`), ``value_raw`` (unclamped), ``label``, ``label_index``, ``probability`` (of the
        predicted bin), and ``low_<level>``/``high_<level>`` per level of ``intervals``; one row per image, in
        order."""
        return self.predict_tensors([self.preprocessor.from_bytes(i) if isinstance(i, (bytes, bytearray))
                                     else self.preprocessor(i) for i in images], intervals)


def load_model_checkpoint(model: torch.nn.Module, checkpoint: str) -> None:
    """Strictly load a Runner checkpoint (``state_dict`` inside) or a bare state dict, weights-only."""
    try:
        state = load_weights_only(checkpoint)
    except FileNotFoundError:
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}') from None
    state = state.get('state_dict', state)
    check_state_dict(model, state, checkpoint)
    model.load_state_dict(state, strict=True)
