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
from .evaluation.conformal import (SIDECAR_SUFFIX, CalibrationLike, check_checkpoint, check_levels, find_calibration,
                                   get_calibration, level_key, sidecar_path)
from .models.heads import OrdinalHead
from .tasks import OrdinalTask
from .utils.checkpoint import CheckpointLoadError, CheckpointMismatchError, check_state_dict, load_weights_only

__all__ = ['CheckpointLoadError', 'CheckpointMismatchError', 'DEFAULT_MAX_PIXELS', 'ImagePreprocessor', 'Predictor',
           'PRECISIONS', 'SIDECAR_SUFFIX', 'check_calibration', 'describe_model', 'decode_image', 'default_precision', 'load_config',
           'load_model_checkpoint', 'sidecar_path']

ConfigLike = Union[str, Config]
_LOADERS = ('LoadImageFromFile', 'LoadOrdinalImage')
PRECISIONS = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def default_precision(device: str) -> str:
    """bf16 on CUDA devices that support it (fp16 on older ones), fp32 on CPU (CPU autocast gains little)."""
    if str(device).startswith('cuda'):
        return 'bf16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'fp16'
    return 'fp32'


def load_config(config: ConfigLike) -> Config:
    """A config (path or object) with numclip_mm registered and its default scope set."""
    if not isinstance(config, Config) and not os.path.isfile(config):
        raise FileNotFoundError(f'config not found: {config}')
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    import numclip_mm.register  # noqa: F401  (registration; configs name our components)
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

    Args:
        input_size: (H, W) the model takes. When given, every image leaves at that size whatever the pipeline does,
            so one odd image cannot break a batch: a pipeline that keeps the image size (no resize step, like the
            demo's) gets the image resized to the input size first (OpenCV, area/bilinear); a pipeline that resizes
            to another size has its output resized (bilinear, antialiased).
    """

    def __init__(self, config: ConfigLike, input_size: Optional[Sequence[int]] = None):
        cfg = load_config(config)
        steps = [t for t in cfg.test_dataloader.dataset.pipeline if t['type'] not in _LOADERS]
        self.pipeline_cfg = steps
        self.input_size = tuple(int(x) for x in input_size) if input_size is not None else None
        self._pipeline = Compose(steps)
        self._resize_first = None  # decided on the first call: does the pipeline leave the image size alone?

    def _run(self, bgr: np.ndarray) -> torch.Tensor:
        return self._pipeline(dict(img=bgr, img_shape=bgr.shape[:2], ori_shape=bgr.shape[:2]))['inputs']

    def __call__(self, image_rgb: np.ndarray) -> torch.Tensor:
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
            raise ValueError(f'expected an RGB image (H, W, 3), got shape {image_rgb.shape}')
        return self._sized(np.ascontiguousarray(image_rgb[..., ::-1]))

    def from_bytes(self, data: bytes, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> torch.Tensor:
        """Encoded image bytes -> CHW uint8 tensor (ValueError as :func:`decode_image`)."""
        return self.from_bgr(self.decode(data, max_pixels))

    @staticmethod
    def decode(data: bytes, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Encoded image bytes -> BGR uint8 (H, W, 3), the input of :meth:`from_bgr`: decode once, then bring the
        image to several models' inputs (ValueError as :func:`decode_image`)."""
        return decode_bgr(data, 'input', max_pixels)

    def from_bgr(self, image_bgr: np.ndarray) -> torch.Tensor:
        """A decoded BGR uint8 image (left unchanged) -> CHW uint8 tensor at ``input_size``."""
        return self._sized(image_bgr)

    def _sized(self, image_bgr: np.ndarray) -> torch.Tensor:
        """The pipeline's output at ``input_size`` (when set), whatever the pipeline does with the image's size."""
        size = self.input_size
        if size is not None and self._resize_first is None:  # probe once with an image of another size
            probe = np.zeros((size[0] + 7, size[1] + 3, 3), dtype=np.uint8)
            self._resize_first = tuple(self._run(probe).shape[-2:]) == probe.shape[:2]
        if self._resize_first and tuple(image_bgr.shape[:2]) != size:
            # a pipeline that keeps the size (no resize step): bring the image to the model's size first, on the
            # small uint8 image (area for shrinking, bilinear for growing) rather than on the pipeline's tensor
            shrink = image_bgr.shape[0] >= size[0] and image_bgr.shape[1] >= size[1]
            image_bgr = cv2.resize(image_bgr, (size[1], size[0]),
                                   interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        inputs = self._run(image_bgr)
        if size is not None and tuple(inputs.shape[-2:]) != size:  # a pipeline that resizes, but to another size
            inputs = torch.nn.functional.interpolate(inputs[None].float(), size=size, mode='bilinear',
                                                     antialias=True, align_corners=False)[0]
            inputs = inputs.round_().clamp_(0, 255).to(torch.uint8)
        return inputs

    def __getstate__(self):
        return dict(pipeline_cfg=self.pipeline_cfg, input_size=self.input_size)

    def __setstate__(self, state):
        import numclip_mm.register  # noqa: F401
        from mmengine.registry import init_default_scope
        init_default_scope('mmpretrain')
        self.pipeline_cfg = state['pipeline_cfg']
        self.input_size = state.get('input_size')
        self._pipeline = Compose(self.pipeline_cfg)
        self._resize_first = None


class Predictor:
    """A trained ordinal model ready for batched inference.

    Args:
        config: config path or :class:`Config` the model was trained with.
        checkpoint: a checkpoint saved by the Runner (or a bare state dict); None keeps the config's weights
            (zero-shot). Loaded weights-only with numclip_mm's allow-list; a checkpoint that does not fit the config
            raises ``CheckpointMismatchError`` naming the keys.
        device: 'cpu', 'cuda', 'cuda:1', ...
        precision: 'fp32', 'fp16' or 'bf16' (autocast; weights stay fp32); default :func:`default_precision`.
        calibration: conformal calibration for prediction intervals (docs/intervals.md); by default the
            ``<checkpoint>.calibration.json`` sidecar written by tools/calibrate.py when it exists, else none.
    """

    def __init__(self, config: ConfigLike, checkpoint: Optional[str] = None, device: str = 'cpu',
                 precision: Optional[str] = None, calibration: Optional[CalibrationLike] = None):
        from mmpretrain.registry import MODELS
        precision = precision or default_precision(device)
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {sorted(PRECISIONS)}, got {precision!r}')
        cfg = load_config(config)
        self.model = MODELS.build(cfg.model)
        if checkpoint is not None:
            load_model_checkpoint(self.model, checkpoint)
        self.model.to(device).eval()
        self.device = torch.device(device)
        if not isinstance(self.model.head, OrdinalHead):
            raise TypeError(f'{type(self.model.head).__name__} is not an OrdinalHead: the predictor needs its task '
                            f'and predict_arrays')
        self.precision = precision
        self.task: OrdinalTask = self.model.head.task
        self.concepts = np.asarray(self.task.concepts, dtype=object)
        self.input_size = _input_size(self.model)
        self.preprocessor = ImagePreprocessor(cfg, self.input_size)
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
                        intervals: Sequence[float] = (), embeddings: bool = False) -> Dict[str, np.ndarray]:
        """Preprocessed CHW uint8 tensors (a list or a stacked batch) -> prediction columns; plus ``low_<level>``
        and ``high_<level>`` (conformal interval bounds) for each level of ``intervals``, and with ``embeddings``
        ``embedding``: (N, D) float32, the L2-normalised image feature the head sees (the image tower after the
        adapter, before the text prototypes: ``v`` of docs/method.md §4-§5), for dedup and search.

        ``value`` is clamped to the task's range (:meth:`OrdinalHead.to_task_range`); ``value_raw`` is the head's
        number before clamping. On CUDA a stacked batch is copied from pinned host memory without blocking.
        """
        intervals = tuple(intervals)
        self.check_intervals(intervals)
        if self.device.type == 'cuda' and isinstance(inputs, torch.Tensor):
            inputs = inputs.pin_memory().to(self.device, non_blocking=True)
        head: OrdinalHead = self.model.head
        with torch.autocast(self.device.type, dtype=PRECISIONS[self.precision],
                            enabled=self.precision != 'fp32'):
            data = self.model.data_preprocessor(dict(inputs=inputs), False)
            feats = self.model.extract_feat(data['inputs'])
            probs, raw = head.predict_arrays(feats)
        values = head.to_task_range(raw.float())
        probs, values, raw = (t.float().cpu().numpy() for t in (probs, values, raw))
        index = probs.argmax(axis=1)
        out = dict(value=values, value_raw=raw, label=self.concepts[index], label_index=index,
                   probability=probs[np.arange(len(index)), index])
        if intervals:
            for key, (low, high) in self.calibration.intervals(values, probs, intervals).items():
                out[f'low_{key}'], out[f'high_{key}'] = low, high
        if embeddings:
            out['embedding'] = torch.nn.functional.normalize(feats[-1].float(), dim=-1).cpu().numpy()
        return out

    def predict(self, images: Sequence[Union[np.ndarray, bytes]], intervals: Sequence[float] = (),
                embeddings: bool = False) -> Dict[str, np.ndarray]:
        """RGB uint8 arrays (or encoded image bytes) -> columns ``value`` (clamped to the task's range, see
        :class:`OrdinalHead`), ``value_raw`` (unclamped), ``label``, ``label_index``, ``probability`` (of the
        predicted bin), ``low_<level>``/``high_<level>`` per level of ``intervals``, and ``embedding`` with
        ``embeddings`` (see :meth:`predict_tensors`); one row per image, in order."""
        return self.predict_tensors([self.preprocessor.from_bytes(i) if isinstance(i, (bytes, bytearray))
                                     else self.preprocessor(i) for i in images], intervals, embeddings)

    def features(self, images: Sequence[Union[np.ndarray, bytes]]) -> np.ndarray:
        """(N, D) float32 L2-normalised image embeddings (what ``numclip-score --embedding`` writes, in fp16)."""
        return self.predict(images, embeddings=True)['embedding']


def _input_size(model: torch.nn.Module) -> Optional[tuple]:
    """(H, W) of the image tower (open_clip's ``visual.image_size``), None when the model does not say."""
    size = getattr(getattr(getattr(model, 'backbone', None), 'visual', None), 'image_size', None)
    if size is None:
        return None
    return (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)


def describe_model(config: ConfigLike, checkpoint: Optional[str] = None) -> Dict[str, object]:
    """``{'task': OrdinalTask, 'input_size': (H, W) or None}`` of the config's model, and, when ``checkpoint`` is
    given, the same exact key/shape check as :class:`Predictor` (``CheckpointMismatchError`` naming the keys).

    The model is built without weight initialisation (parameters are allocated but never initialised, and nothing
    is loaded into them), so a scoring driver can refuse a wrong checkpoint up front at a fraction of a Predictor's
    cost.
    """
    from mmpretrain.registry import MODELS
    cfg = load_config(config)
    with _skip_weight_init():
        model = MODELS.build(cfg.model)
    if checkpoint is not None:
        try:  # memory-mapped: only the shapes are looked at, so the tensors' bytes are never read
            state = load_weights_only(checkpoint, mmap=True)
        except FileNotFoundError:
            raise FileNotFoundError(f'checkpoint not found: {checkpoint}') from None
        check_state_dict(model, state.get('state_dict', state), checkpoint)
    return dict(task=model.head.task, input_size=_input_size(model))


class _skip_weight_init:
    """Make torch.nn.init's in-place initialisers no-ops (the shapes are all a key/shape check needs)."""
    NAMES = ('uniform_', 'normal_', 'trunc_normal_', 'constant_', 'ones_', 'zeros_', 'xavier_uniform_',
             'xavier_normal_', 'kaiming_uniform_', 'kaiming_normal_', 'orthogonal_')

    def __enter__(self):
        self.saved = {n: getattr(torch.nn.init, n) for n in self.NAMES if hasattr(torch.nn.init, n)}
        for n in self.saved:
            setattr(torch.nn.init, n, lambda tensor, *a, **k: tensor)

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(torch.nn.init, n, f)


def check_calibration(calibration_file: str, checkpoint: str, levels: Sequence[float]) -> None:
    """Raise ValueError (or KeyError for a level it lacks) unless ``calibration_file`` (a conformal sidecar, see
    :func:`sidecar_path`) was fitted for ``checkpoint`` and holds every coverage level of ``levels``."""
    levels = check_levels(levels)
    calibration = get_calibration(calibration_file)
    check_checkpoint(calibration, checkpoint)
    for level in levels:
        calibration.threshold(level)


def load_model_checkpoint(model: torch.nn.Module, checkpoint: str) -> None:
    """Strictly load a Runner checkpoint (``state_dict`` inside) or a bare state dict, weights-only."""
    try:
        state = load_weights_only(checkpoint)
    except FileNotFoundError:
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}') from None
    state = state.get('state_dict', state)
    check_state_dict(model, state, checkpoint)
    model.load_state_dict(state, strict=True)
