"""NumCLIP as an mmpretrain ``ImageClassifier``: one CLIP model shared by both towers, widths wired from the model.

Building is not loading: the constructor allocates the architecture (open_clip's random init); :meth:`init_weights`
(what MMEngine's Runner calls before training, mmpretrain's convention) applies the pretrained CLIP weights once
and then lets each part initialise from them (the prompt tokens from CLIP's token embedding). Test, resume,
``load_from`` and inference load a checkpoint over the built model and never read the CLIP file.
"""
import contextlib
from typing import Iterator, Optional

import torch
from mmpretrain.models import ImageClassifier
from mmpretrain.registry import MODELS

from .clip_loader import CLIPSource
from .heads import OrdinalHead


@MODELS.register_module()
class NumCLIP(ImageClassifier):
    """``backbone`` (image tower) -> ``neck`` (adapter) -> ``head`` (prompts, text tower, regressor, losses).

    Args:
        clip: ``dict(model_name=..., pretrained=..., cache_dir=..., quick_gelu=...)``: the CLIP model both towers
            come from, built once; ``pretrained`` is applied by :meth:`init_weights`.
            ``--cfg-options model.clip.pretrained=PATH`` switches both.
        backbone / neck / head: configs as in ``ImageClassifier``. The head must be an :class:`OrdinalHead`: it gets
            the open_clip model as ``clip_model`` (as the backbone does), and the backbone's ``embed_dim`` fills
            ``in_channels`` of the neck and head.

    Attributes:
        load_pretrained: whether :meth:`init_weights` reads ``clip.pretrained`` (True); the Runner turns it off
            when a checkpoint will replace every weight anyway (:func:`pretrained_weights_skipped`).
    """

    def __init__(self, backbone: dict, clip: Optional[dict] = None, neck: Optional[dict] = None,
                 head: Optional[dict] = None, **kwargs):
        source = CLIPSource(**clip) if clip is not None else None
        clip_model = source.model if source is not None else None
        backbone = MODELS.build(backbone, default_args=_drop_none(clip_model=clip_model))
        width = backbone.embed_dim
        if neck is not None:
            neck = MODELS.build(neck, default_args=dict(in_channels=width))
        if head is not None:
            head_type = MODELS.get(head['type']) if isinstance(head['type'], str) else head['type']
            if not (isinstance(head_type, type) and issubclass(head_type, OrdinalHead)):
                raise TypeError(f"NumCLIP needs an OrdinalHead (task, predict_arrays, predict), got {head['type']!r}")
            head = MODELS.build(head, default_args=dict(in_channels=width, **_drop_none(clip_model=clip_model)))
        super().__init__(backbone=backbone, neck=neck, head=head, **kwargs)
        self.clip_source = source  # not a submodule: its parts are (backbone.visual, head.text_encoder)
        self.load_pretrained = True

    def init_weights(self):
        """Apply ``clip.pretrained`` (unless :attr:`load_pretrained` is off), then initialise every part from it."""
        if not self.is_init and self.load_pretrained and self.clip_source is not None:
            with torch.no_grad():
                self.clip_source.load()
        super().init_weights()


@contextlib.contextmanager
def pretrained_weights_skipped(model: torch.nn.Module) -> Iterator[None]:
    """``init_weights`` of every :class:`NumCLIP` in ``model`` skips reading its CLIP file while the block runs (a
    checkpoint loaded next replaces every weight)."""
    found = [m for m in model.modules() if isinstance(m, NumCLIP)]
    saved = [m.load_pretrained for m in found]
    for m in found:
        m.load_pretrained = False
    try:
        yield
    finally:
        for m, value in zip(found, saved):
            m.load_pretrained = value


def _drop_none(**kwargs) -> dict:
    return {k: v for k, v in kwargs.items() if v is not None}
