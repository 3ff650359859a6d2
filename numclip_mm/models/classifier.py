"""NumCLIP as an mmpretrain ``ImageClassifier``: one CLIP load shared by both towers, widths wired from the model."""
import inspect
from typing import Optional

from mmpretrain.models import ImageClassifier
from mmpretrain.registry import MODELS

from .clip_loader import build_open_clip


@MODELS.register_module()
class NumCLIP(ImageClassifier):
    """``backbone`` (image tower) -> ``neck`` (adapter) -> ``head`` (prompts, text tower, regressor, losses).

    Args:
        clip: ``dict(model_name=..., pretrained=..., cache_dir=..., quick_gelu=...)``: the CLIP model both towers
            come from, loaded once. ``--cfg-options model.clip.pretrained=PATH`` switches both.
        backbone / neck / head: configs as in ``ImageClassifier``. The open_clip model is handed to the backbone and to a
            head that takes a ``clip_model``, and the backbone's ``embed_dim`` fills ``in_channels`` of the neck and head.
    """

    def __init__(self, backbone: dict, clip: Optional[dict] = None, neck: Optional[dict] = None,
                 head: Optional[dict] = None, **kwargs):
        clip_model = build_open_clip(**clip) if clip is not None else None
        backbone = MODELS.build(backbone, default_args=_if_given(clip_model=clip_model))
        width = backbone.embed_dim
        if neck is not None:
            neck = MODELS.build(neck, default_args=dict(in_channels=width))
        if head is not None:
            head_args = dict(in_channels=width)
            if 'clip_model' in inspect.signature(MODELS.get(head['type'])).parameters:
                head_args.update(_if_given(clip_model=clip_model))  # heads with a text tower share the load
            head = MODELS.build(head, default_args=head_args)
        super().__init__(backbone=backbone, neck=neck, head=head, **kwargs)


def _if_given(**kwargs) -> dict:
    return {k: v for k, v in kwargs.items() if v is not None}
