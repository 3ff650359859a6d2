"""The image tower: open_clip's visual encoder as an mmpretrain backbone."""
from typing import Optional, Tuple

import torch
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS

from .clip_loader import CLIPSource


@MODELS.register_module()
class OpenCLIPVisionBackbone(BaseModule):
    """CLIP's image encoder, returning ``(features,)`` of width ``embed_dim`` (the joint-space width).

    Args:
        model_name / pretrained / cache_dir / quick_gelu: see :func:`build_open_clip`; ``pretrained`` is applied by
            :meth:`init_weights`. Ignored when ``clip_model`` (an open_clip model built by :class:`NumCLIP`, which
            shares it between both towers and applies its weights itself) is given.
        frozen: freeze all weights (zero-shot CLIP, linear-probe style baselines); NumCLIP fine-tunes them.
    """

    def __init__(self, model_name: str = 'ViT-B-16', pretrained: Optional[str] = None,
                 cache_dir: Optional[str] = None, quick_gelu: Optional[bool] = None, frozen: bool = False,
                 clip_model: Optional[torch.nn.Module] = None, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        # built on its own: this tower owns its CLIP source and applies the pretrained weights in init_weights
        self.clip_source = None if clip_model is not None else CLIPSource(model_name, pretrained, cache_dir,
                                                                          quick_gelu)
        clip_model = clip_model if clip_model is not None else self.clip_source.model
        self.visual = clip_model.visual
        self.embed_dim = int(clip_model.text_projection.shape[1]) if clip_model.text_projection is not None \
            else int(self.visual.output_dim)
        self.frozen = frozen
        if frozen:
            self.visual.requires_grad_(False)

    def init_weights(self):
        """The pretrained CLIP weights when this tower owns its CLIP (else :class:`NumCLIP` applies them); never a
        re-initialisation."""
        if not self.is_init and self.clip_source is not None:
            with torch.no_grad():
                self.clip_source.load()
        self.is_init = True

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.visual.eval()
        return self

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        return (self.visual(x),)
