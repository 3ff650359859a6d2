"""The image tower: open_clip's visual encoder as an mmpretrain backbone."""
from typing import Optional, Tuple

import torch
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS

from .clip_loader import build_open_clip


@MODELS.register_module()
class OpenCLIPVisionBackbone(BaseModule):
    """CLIP's image encoder, returning ``(features,)`` of width ``embed_dim`` (the joint-space width).

    Args:
        model_name / pretrained / cache_dir / quick_gelu: see :func:`build_open_clip`; ignored when ``clip_model``
            (an already-built open_clip model, passed by :class:`NumCLIP` so both towers share one load) is given.
        frozen: freeze all weights (zero-shot CLIP, linear-probe style baselines); NumCLIP fine-tunes them.
    """

    def __init__(self, model_name: str = 'ViT-B-16', pretrained: Optional[str] = None,
                 cache_dir: Optional[str] = None, quick_gelu: Optional[bool] = None, frozen: bool = False,
                 clip_model: Optional[torch.nn.Module] = None, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        clip_model = clip_model or build_open_clip(model_name, pretrained, cache_dir, quick_gelu)
        self.visual = clip_model.visual
        self.embed_dim = int(clip_model.text_projection.shape[1]) if clip_model.text_projection is not None \
            else int(self.visual.output_dim)
        self.frozen = frozen
        if frozen:
            self.visual.requires_grad_(False)

    def init_weights(self):
        """Weights come from the CLIP checkpoint (or open_clip's own init); never re-initialise them."""

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.visual.eval()
        return self

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        return (self.visual(x),)
