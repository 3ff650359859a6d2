"""One small predictor API: config + checkpoint -> model; ``predict(images)`` -> columns.

Used by the scorer (:mod:`numclip_mm.batch`) and any other inference code; it never touches training code paths.
The work is split in two picklable halves so a pipeline can run them in different processes:
:class:`ImagePreprocessor` (decode-side, CPU: the config's test transforms) and :class:`Predictor` (the model,
with text prototypes cached after the first batch).

Importing this module is light (torch, OpenCV, PIL): the model stack (mmpretrain, open_clip and
numclip_mm's models) is imported when a model is first built, or a pipeline with other steps than the usual test
steps (:func:`register_inference_components`), and numclip_mm's datasets, metrics and runner never are. A predictor
made from a traced graph (:meth:`Predictor.from_graph`) builds no model and imports none of the stack.
"""
import copy
import importlib
import io
import logging
import os
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Union

import cv2
import numpy as np
import torch

from .conformal import (
    SIDECAR_SUFFIX,
    CalibrationLike,
    check_checkpoint,
    check_levels,
    find_calibration,
    get_calibration,
    sidecar_path,
)
from .image_decode import decode_bgr
from .light_pipeline import light_pipeline
from .prediction_graph import GraphTraceError, PredictionGraph, load_graph, trace_graph, tuples
from .shared import DEFAULT_MAX_PIXELS, PRECISION_DTYPES, bytes_digest, level_key
from .tasks import OrdinalTask, apply_config_task
from .utils.checkpoint import CheckpointLoadError, CheckpointMismatchError, check_state_dict, load_weights_only
from .utils.config_file import ConfigLoadError, load_config_file

if TYPE_CHECKING:  # mmengine's config (and its formatter, yapf) is imported when a config is first loaded
    from mmengine.config import Config
    from PIL import Image

__all__ = ['CheckpointChangedError', 'CheckpointLoadError', 'CheckpointMismatchError', 'ConfigLoadError',
           'DEFAULT_MAX_PIXELS',
           'ImagePreprocessor', 'Predictor', 'PRECISIONS', 'SIDECAR_SUFFIX', 'check_calibration', 'describe_model',
           'decode_image', 'default_precision', 'image_to_model_input', 'load_config', 'load_model_checkpoint',
           'sidecar_path']

ConfigLike = Union[str, 'Config']
_LOADERS = ('LoadImageFromFile', 'LoadOrdinalImage')
PRECISIONS = {name: getattr(torch, dtype) for name, dtype in PRECISION_DTYPES.items()}


def default_precision(device: str) -> str:
    """bf16 on CUDA devices that support it (fp16 on older ones), fp32 on CPU (CPU autocast gains little)."""
    if str(device).startswith('cuda'):
        return 'bf16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'fp16'
    return 'fp32'


class CheckpointChangedError(CheckpointLoadError):
    """The checkpoint's bytes are not the ones expected (the file was replaced after its digest was taken)."""


def register_inference_components(cfg: Optional['Config'] = None) -> None:
    """Register what building a model and its test pipeline needs: numclip_mm's models (:mod:`numclip_mm.models`)
    and mmpretrain's transforms, plus a config's other ``custom_imports``; not numclip_mm's datasets, metrics and
    runner (what ``numclip_mm.register``, the configs' own custom import, adds for training)."""
    from ._setup import prepare_runtime
    prepare_runtime()  # before open_clip/mmpretrain import torchvision
    import mmpretrain.datasets.transforms  # noqa: F401  (the test pipeline's steps)

    import numclip_mm.models  # noqa: F401
    for name in ((cfg.get('custom_imports') if cfg is not None else None) or {}).get('imports', []):
        if name != 'numclip_mm.register':
            importlib.import_module(name)


def load_config(config: ConfigLike) -> 'Config':
    """A config (path or object; an object is copied, not changed) with its top-level ``task`` applied
    (:func:`numclip_mm.tasks.apply_config_task`), what inference needs registered and its default scope set."""
    from mmengine.config import Config
    if not isinstance(config, Config) and not os.path.isfile(config):
        raise FileNotFoundError(f'config not found: {config}')
    # ConfigLoadError names the file and line; custom imports are registered below, only what inference needs
    cfg = copy.deepcopy(config) if isinstance(config, Config) else load_config_file(config,
                                                                                   import_custom_modules=False)
    apply_config_task(cfg)  # a top-level ``task`` is the head's and datasets' task
    register_inference_components(cfg)
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    return cfg


def decode_image(data: bytes, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> RGB uint8 (H, W, 3): the public RGB entry over the project's one decoder
    (:func:`numclip_mm.image_decode.decode_bgr`, also used by training's ``LoadOrdinalImage``).

    Raises ValueError ('empty image', 'cannot decode image ...', or 'exceeds the pixel limit' when the header
    declares more than ``max_pixels`` pixels; None: no limit) without decoding oversized images.
    """
    bgr = decode_bgr(data, 'input', max_pixels)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)  # the one channel conversion, in place


ImageLike = Union[bytes, bytearray, memoryview, str, os.PathLike, np.ndarray, 'Image.Image']  # PIL's
_PIL_HIGH_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N')  # 16-bit gray: 8 bits kept, as the decoder does


def image_to_model_input(image: ImageLike, float_scale: Optional[float] = None) -> Union[bytes, np.ndarray]:
    """One image in any form :meth:`Predictor.predict` accepts -> encoded bytes (decoded by the training decoder,
    :func:`numclip_mm.datasets.decode_bgr`) or an RGB uint8 (H, W, 3) array.

    Raises TypeError for a type that is not an image (naming it) and for float/non-uint8 arrays without
    ``float_scale``; ValueError for an array of another shape or with values outside ``[0, float_scale]``.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        from .batch.catalog import ImageReader  # fsspec: local paths and URIs, as the scorer reads path columns
        return ImageReader()(os.fspath(image))  # bounded as the scorer reads: 64 MiB, --read-timeout's default
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, float_scale)
    from PIL import Image
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, float_scale)
    hint = (' (preprocessed CHW uint8 tensors go to predict_tensors; an HWC image tensor: pass tensor.numpy())'
            if isinstance(image, torch.Tensor) else '')
    raise TypeError(f'cannot predict from a {type(image).__module__}.{type(image).__qualname__}: give encoded '
                    f'bytes, a path or URI (str/pathlib.Path), a PIL image or an HWC numpy array{hint}')


def _pil_to_rgb(image, float_scale: Optional[float]) -> np.ndarray:
    """PIL image -> RGB uint8, its EXIF orientation applied first (the training decoder, OpenCV, applies it too)."""
    from PIL import ImageOps
    image = ImageOps.exif_transpose(image)
    if image.mode in _PIL_HIGH_BIT_MODES:
        return _array_to_rgb((np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8), None)
    if image.mode in ('I', 'F'):  # 32-bit int/float pixels: no fixed white level
        if float_scale is None:
            raise TypeError(f'a PIL image of mode {image.mode!r} has no fixed range: pass float_scale=<value of full '
                            f'white>, e.g. predict(image, float_scale=65535) for 16-bit data')
        return _array_to_rgb(np.asarray(image, dtype=np.float64), float_scale)
    return np.asarray(image.convert('RGB'))


def _array_to_rgb(array: np.ndarray, float_scale: Optional[float]) -> np.ndarray:
    """HWC (or HW) array -> RGB uint8 (H, W, 3): gray repeated, alpha dropped, non-uint8 scaled by ``float_scale``."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f'expected an image array (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA, got shape '
                         f'{array.shape}' + (' (a batch? pass a list of images)' if array.ndim == 4 else ''))
    if array.dtype != np.uint8:
        if array.dtype == bool or not (np.issubdtype(array.dtype, np.floating)
                                       or np.issubdtype(array.dtype, np.integer)):
            raise TypeError(f'cannot predict from a {array.dtype} array: give uint8 pixels, or float pixels with '
                            f'float_scale')
        if float_scale is None:
            raise TypeError(f'a {array.dtype} image array needs its scale: pass float_scale=<value of full white>, '
                            f'e.g. predict(x, float_scale=1.0) for pixels in [0, 1] or predict(x, float_scale=255) '
                            f'for [0, 255] (uint8 arrays need none)')
        if not float_scale > 0:
            raise ValueError(f'float_scale must be positive, got {float_scale}')
        values = array.astype(np.float64) / float(float_scale)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1 + 1e-6:
            raise ValueError(f'pixel values must lie in [0, float_scale={float_scale:g}]; this array spans '
                             f'[{np.nanmin(array):g}, {np.nanmax(array):g}] (is float_scale right?)')
        array = np.rint(values.clip(0, 1) * 255).astype(np.uint8)
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return array[..., :3]


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
        self._set([t for t in cfg.test_dataloader.dataset.pipeline if t['type'] not in _LOADERS], input_size,
                  ((cfg.get('custom_imports') or {}).get('imports') or ()))

    @classmethod
    def from_steps(cls, steps: Sequence[dict], input_size: Optional[Sequence[int]] = None,
                   imports: Sequence[str] = ()) -> 'ImagePreprocessor':
        """The preprocessor of a test pipeline's steps (its loading step excluded), without a config; ``imports``:
        the config's ``custom_imports`` (modules registering custom steps), imported only if a step needs the
        registry."""
        self = cls.__new__(cls)
        self._set(steps, input_size, imports)
        return self

    def _set(self, steps: Sequence[dict], input_size: Optional[Sequence[int]], imports: Sequence[str] = ()) -> None:
        self.pipeline_cfg, self.imports = list(steps), list(imports)
        self.input_size = tuple(int(x) for x in input_size) if input_size is not None else None
        self._pipeline = _build_pipeline(self.pipeline_cfg, self.imports)
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
        return dict(pipeline_cfg=self.pipeline_cfg, input_size=self.input_size, imports=self.imports)

    def __setstate__(self, state):
        self._set(state['pipeline_cfg'], state.get('input_size'), state.get('imports', ()))


def _build_pipeline(steps: Sequence[dict], imports: Sequence[str] = ()):
    """The test pipeline of ``steps``: mmcv's classes when every step is a usual one (no mmpretrain import, see
    :mod:`numclip_mm.light_pipeline`), else through mmpretrain's registry, with the config's ``imports``."""
    pipeline = light_pipeline(steps)
    if pipeline is not None:
        return pipeline
    from mmengine.dataset import Compose
    from mmengine.registry import DefaultScope, init_default_scope
    register_inference_components(dict(custom_imports=dict(imports=list(imports))))
    if DefaultScope.get_current_instance() is None:
        init_default_scope('mmpretrain')
    return Compose(steps)


class Predictor:
    """A trained ordinal model ready for batched inference.

    Args:
        config: config path or :class:`Config` the model was trained with.
        checkpoint: a checkpoint saved by the Runner (or a bare state dict), a local path or an fsspec URI: every
            weight comes from it, no CLIP file is read. Loaded weights-only with numclip_mm's allow-list; a
            checkpoint that does not fit the config raises ``CheckpointMismatchError`` naming the keys. None: the
            config's own weights (``init_weights``: pretrained CLIP, zero-shot).
        device: 'cpu', 'cuda', 'cuda:1', ...
        precision: 'fp32', 'fp16' or 'bf16' (autocast; weights stay fp32); default :func:`default_precision`.
        calibration: conformal calibration for prediction intervals (docs/intervals.md); by default the
            ``<checkpoint>.calibration.json`` sidecar written by tools/calibrate.py when it exists, else none;
            ``False``: none, the sidecar is not looked for.
        checkpoint_sha256: the digest the checkpoint must have (the scorer's, taken once while planning): its bytes
            are read once, checked and loaded from memory, so the model is exactly that file;
            :class:`CheckpointChangedError` when the file was replaced since.
        checkpoint_data: the checkpoint file's bytes, already read by the caller, whose sha256 is
            ``checkpoint_sha256``: loaded without reading or hashing the file again.

    :meth:`trace` records the model's prediction as a TorchScript archive and :meth:`from_graph` makes a predictor
    of one with torch alone (no config, no model build): what the scorer's actors do.
    """

    def __init__(self, config: ConfigLike, checkpoint: Optional[str] = None, device: str = 'cpu',
                 precision: Optional[str] = None, calibration: Optional[CalibrationLike] = None,
                 checkpoint_sha256: Optional[str] = None, checkpoint_data: Optional[bytes] = None):
        precision = _check_precision(precision, device)
        cfg = load_config(config)
        from mmpretrain.registry import MODELS

        from .models.heads import OrdinalHead
        self.model = MODELS.build(cfg.model)  # the architecture only: no CLIP file is read
        if checkpoint is not None:
            load_model_checkpoint(self.model, checkpoint, checkpoint_sha256, checkpoint_data)
        else:  # zero-shot: the config's own weights (pretrained CLIP)
            apply_config_weights(self.model)
        self.model.to(device).eval()
        if not isinstance(self.model.head, OrdinalHead):
            raise TypeError(f'{type(self.model.head).__name__} is not an OrdinalHead: the predictor needs its task '
                            f'and predict_arrays')
        input_size = _input_size(self.model)
        found = None if calibration is not None or '://' in str(checkpoint) else find_calibration(checkpoint)
        self._set(PredictionGraph(self.model), self.model.head.task, input_size, ImagePreprocessor(cfg, input_size),
                  device, precision, None if calibration is False else get_calibration(calibration or found))
        if self.calibration is not None and (found is not None or checkpoint_sha256 is not None):
            check_checkpoint(self.calibration, checkpoint, checkpoint_sha256)

    @classmethod
    def from_graph(cls, archive: bytes, device: str = 'cpu', precision: Optional[str] = None,
                   calibration: Optional[CalibrationLike] = None) -> 'Predictor':
        """A predictor of an archive of :meth:`trace` (bytes), loaded onto ``device``, with ``calibration`` (the
        archive holds none: give the one checked for its checkpoint). Imports torch and, for a pipeline of the usual
        test steps, mmcv's transforms only."""
        precision = _check_precision(precision, device)
        graph, meta = load_graph(archive, device)
        self = cls.__new__(cls)
        self.model = None
        input_size = tuple(meta['input_size'])
        self._set(graph, OrdinalTask(**meta['task']), input_size,
                  ImagePreprocessor.from_steps(tuples(meta['pipeline']), input_size, meta.get('imports', ())),
                  device, precision,
                  get_calibration(calibration))
        return self

    def _set(self, graph, task: OrdinalTask, input_size, preprocessor, device, precision, calibration) -> None:
        self.graph, self.task, self.input_size, self.preprocessor = graph, task, input_size, preprocessor
        self.device, self.precision, self.calibration = torch.device(device), precision, calibration
        self.concepts = np.asarray(self.task.concepts, dtype=object)

    def trace(self) -> bytes:
        """The model's prediction as a TorchScript archive (:func:`numclip_mm.prediction_graph.trace_graph`: traced on
        the CPU in fp32, checked against the model) with the task, input size and test pipeline, for
        :meth:`from_graph`. Raises GraphTraceError when the model cannot be traced faithfully."""
        if self.model is None:
            raise GraphTraceError('this predictor is already a graph')
        return trace_graph(self.model, self.input_size,
                           dict(task=self.task, pipeline=self.preprocessor.pipeline_cfg,
                                imports=self.preprocessor.imports))

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
        """Preprocessed CHW uint8 tensors (a list or a stacked batch) -> the prediction columns of :meth:`predict`;
        with ``embeddings`` also ``embedding``: (N, D) float32, the L2-normalised image feature the head sees (the
        image tower after the adapter, before the text prototypes: ``v`` of docs/method.md §4-§5), for dedup and
        search.

        On CUDA a stacked batch is copied from pinned host memory without blocking.
        """
        intervals = tuple(intervals)
        self.check_intervals(intervals)
        if len(inputs) == 0:
            return self._empty_columns(intervals)
        if self.model is None and not isinstance(inputs, torch.Tensor):  # a graph takes one stacked batch
            inputs = torch.stack(list(inputs))
        if self.device.type == 'cuda' and isinstance(inputs, torch.Tensor):
            inputs = inputs.pin_memory().to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=PRECISIONS[self.precision],
                            enabled=self.precision != 'fp32'):
            probs, raw, values, feats = self.graph(inputs)
        probs, values, raw = (t.float().cpu().numpy() for t in (probs, values, raw))
        rows = np.arange(len(values))
        index, top = self.task.nearest_bin(values), probs.argmax(axis=1)
        out = dict(value=values, value_raw=raw, label=self.concepts[index], label_index=index,
                   probability=probs[rows, index], bin_argmax=self.concepts[top], bin_argmax_index=top,
                   bin_argmax_probability=probs[rows, top])
        if intervals:
            for key, (low, high) in self.calibration.intervals(values, probs, intervals).items():
                out[f'low_{key}'], out[f'high_{key}'] = low, high
        if embeddings:
            out['embedding'] = feats.float().cpu().numpy()
        return out

    def _empty_columns(self, intervals: Sequence[float]) -> Dict[str, np.ndarray]:
        """The columns of :meth:`predict` with no rows (dtypes as for a non-empty batch)."""
        floats, ints, labels = np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, dtype=object)
        out = dict(value=floats, value_raw=floats.copy(), label=labels, label_index=ints, probability=floats.copy(),
                   bin_argmax=labels.copy(), bin_argmax_index=ints.copy(), bin_argmax_probability=floats.copy())
        for level in intervals:
            out[f'low_{level_key(level)}'], out[f'high_{level_key(level)}'] = np.zeros(0), np.zeros(0)
        return out

    def predict(self, images: Union[ImageLike, Sequence[ImageLike]], intervals: Sequence[float] = (),
                float_scale: Optional[float] = None, embeddings: bool = False) -> Dict[str, np.ndarray]:
        """One image or a list of images -> prediction columns, one row per image, in order (one image: one row).

        An image is any of (see :func:`image_to_model_input`): encoded bytes; a path (``str``, ``pathlib.Path`` or
        an fsspec URI such as ``s3://bucket/key.jpg``); a PIL image of any mode (EXIF orientation applied, as in
        training); a uint8 array (H, W) or (H, W, 1) gray, (H, W, 3) RGB or (H, W, 4) RGBA (alpha dropped, as the
        decoder does for an RGBA PNG); a float (or non-uint8 integer) array only with ``float_scale``, the value of
        full white (1.0 for images in [0, 1], 255 for [0, 255]). Anything else raises TypeError.

        Columns (docs/predicting.md):

        - ``value``: the predicted number, clamped to the task's range (:class:`OrdinalHead`); ``value_raw``: the
          head's number before clamping.
        - ``label`` / ``label_index``: the concept and index of the bin ``value`` falls in
          (:meth:`OrdinalTask.nearest_bin`): label and value agree by construction. ``probability``: that bin's
          probability.
        - ``bin_argmax`` / ``bin_argmax_index`` / ``bin_argmax_probability``: the most probable bin (the coarse
          classification stage) and its probability; it can differ from ``label`` when the fine stage moves the
          number into a neighbouring bin.
        - ``low_<level>``/``high_<level>``: conformal interval bounds per level of ``intervals``.
        - ``embedding`` (with ``embeddings``): see :meth:`predict_tensors`.
        """
        batch = images if isinstance(images, (list, tuple)) else [images]
        return self.predict_tensors([self._model_input(image, float_scale) for image in batch], intervals,
                                    embeddings)

    def features(self, images: Union[ImageLike, Sequence[ImageLike]],
                 float_scale: Optional[float] = None) -> np.ndarray:
        """(N, D) float32 L2-normalised image embeddings (what ``numclip-score --embedding`` writes, in fp16)."""
        return self.predict(images, float_scale=float_scale, embeddings=True)['embedding']

    def _model_input(self, image, float_scale: Optional[float]) -> torch.Tensor:
        image = image_to_model_input(image, float_scale)
        return self.preprocessor.from_bytes(image) if isinstance(image, bytes) else self.preprocessor(image)


def _check_precision(precision: Optional[str], device: str) -> str:
    precision = precision or default_precision(device)
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {sorted(PRECISIONS)}, got {precision!r}')
    return precision


def apply_config_weights(model: torch.nn.Module) -> None:
    """The model's ``init_weights`` (pretrained CLIP for NumCLIP), as the Runner runs it before training, without
    MMEngine's per-parameter report (logged at INFO when no log file is open: hundreds of lines for inference)."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)


def _input_size(model: torch.nn.Module) -> Optional[tuple]:
    """(H, W) of the image tower (open_clip's ``visual.image_size``), None when the model does not say."""
    size = getattr(getattr(getattr(model, 'backbone', None), 'visual', None), 'image_size', None)
    if size is None:
        return None
    return (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)


def describe_model(config: ConfigLike, checkpoint: Optional[str] = None) -> Dict[str, object]:
    """``{'task': OrdinalTask, 'input_size': (H, W) or None}`` of the config's model, and, when ``checkpoint`` is
    given, the same exact key/shape check as :class:`Predictor` (``CheckpointMismatchError`` naming the keys).

    The model is a skeleton on the meta device (shapes, no storage, nothing initialised or read), so a scoring
    driver can refuse a wrong checkpoint up front at a fraction of a Predictor's cost.
    """
    from mmpretrain.registry import MODELS
    cfg = load_config(config)
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    if checkpoint is not None:
        try:  # memory-mapped: only the shapes are looked at, so the tensors' bytes are never read
            state = load_weights_only(checkpoint, mmap=True)
        except FileNotFoundError:
            raise FileNotFoundError(f'checkpoint not found: {checkpoint}') from None
        check_state_dict(model, state.get('state_dict', state), checkpoint)
    return dict(task=model.head.task, input_size=_input_size(model))


def check_calibration(calibration_file: str, checkpoint: str, levels: Sequence[float],
                      checkpoint_sha256: Optional[str] = None):
    """The :class:`~numclip_mm.conformal.Calibration` in ``calibration_file`` (a conformal sidecar, see
    :func:`sidecar_path`); ValueError (or KeyError for a level it lacks) unless it was fitted for ``checkpoint``
    (whose sha256, when already known, is ``checkpoint_sha256``) and holds every coverage level of ``levels``."""
    levels = check_levels(levels)
    calibration = get_calibration(calibration_file)
    check_checkpoint(calibration, checkpoint, checkpoint_sha256)
    for level in levels:
        calibration.threshold(level)
    return calibration


def read_checkpoint_bytes(checkpoint: str) -> bytes:
    """The bytes of a checkpoint file, a local path or an fsspec URI."""
    try:
        if '://' in str(checkpoint):
            import fsspec
            with fsspec.open(str(checkpoint), 'rb') as f:
                return f.read()
        with open(checkpoint, 'rb') as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}') from None


def load_model_checkpoint(model: torch.nn.Module, checkpoint: str, sha256: Optional[str] = None,
                          data: Optional[bytes] = None) -> None:
    """Strictly load a Runner checkpoint (``state_dict`` inside) or a bare state dict, weights-only.

    With ``sha256``, the file is read once into memory, its digest checked (:class:`CheckpointChangedError` when
    it differs) and those very bytes loaded: what is loaded is exactly what was checked. ``data``: those bytes,
    already read and hashed by the caller (``sha256`` their digest): loaded as they are.
    """
    if data is None and sha256 is not None:
        data = read_checkpoint_bytes(checkpoint)
        got = bytes_digest(data)
        if got != sha256:
            raise CheckpointChangedError(
                f'checkpoint {checkpoint} changed since the job was planned: its sha256 is {got}, the job (and the '
                f'outputs it labels) expects {sha256}; nothing was scored with it. Keep the checkpoint unchanged '
                f'while a job runs, then run the command again')
    elif data is None and '://' in str(checkpoint):
        data = read_checkpoint_bytes(checkpoint)
    if data is not None:
        state = load_weights_only(io.BytesIO(data), name=str(checkpoint))
        del data
    else:
        try:
            state = load_weights_only(checkpoint)
        except FileNotFoundError:
            raise FileNotFoundError(f'checkpoint not found: {checkpoint}') from None
    state = state.get('state_dict', state)
    check_state_dict(model, state, checkpoint)
    model.load_state_dict(state, strict=True)
