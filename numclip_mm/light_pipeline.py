"""A config's test pipeline without importing mmpretrain, for pipelines made of the usual test steps.

Building the pipeline through mmpretrain's registry imports ``mmpretrain.datasets`` (every dataset, torchvision):
~1.3 s of a scorer actor's start-up. The usual test steps need none of it: ``Resize`` and ``CenterCrop`` are
mmcv's own classes (mmpretrain registers exactly these), used here directly, so their output is the same by
construction; ``PackInputs`` keeps only what inference reads, the image as a CHW tensor, made as mmpretrain makes
it. :func:`light_pipeline` returns None for any other step, and the caller builds the pipeline through the registry.
"""
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

LIGHT_STEPS = ('Resize', 'CenterCrop', 'PackInputs')


class PackImage:
    """mmpretrain's ``PackInputs`` for inference: ``results[input_key]`` (HW or HWC array) -> ``inputs``, a CHW
    tensor of the same dtype; the data sample (labels, meta keys) is not made: inference reads none of it."""

    def __init__(self, input_key: str = 'img', algorithm_keys=(), meta_keys=()):
        self.input_key = input_key

    def __call__(self, results: Dict) -> Dict:
        image = results[self.input_key]
        if image.ndim == 2:
            image = image[..., None]
        return dict(inputs=torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))


class LightPipeline:
    """The steps in order, each a callable ``results -> results`` (mmcv transforms and :class:`PackImage`)."""

    def __init__(self, steps: Sequence[Callable]):
        self.steps = list(steps)

    def __call__(self, results: Dict) -> Dict:
        for step in self.steps:
            results = step(results)
        return results


def light_pipeline(steps: Sequence[Dict]) -> Optional[LightPipeline]:
    """The pipeline of ``steps`` (config dicts, loading step excluded) built from mmcv's classes, or None when a
    step is not one of :data:`LIGHT_STEPS` or is not given with plain keyword arguments."""
    if not all(isinstance(s, dict) and s.get('type') in LIGHT_STEPS for s in steps):
        return None
    from mmcv.transforms import CenterCrop, Resize  # mmcv's, not mmpretrain's package (no torchvision, no datasets)
    classes = dict(Resize=Resize, CenterCrop=CenterCrop, PackInputs=PackImage)
    built: List[Callable] = []
    for step in steps:
        kwargs = {k: v for k, v in step.items() if k != 'type'}
        try:
            built.append(classes[step['type']](**kwargs))
        except (TypeError, ValueError, AssertionError):  # let the registry build it and raise its own error
            return None
    return LightPipeline(built)
