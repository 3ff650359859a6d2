"""NumCLIP as an mmpretrain ``ImageClassifier``: one CLIP load shared by both towers, widths wired from the model."""
from typing import Optional

from mmpretrain.models import ImageClassifier
from mmpretrain.registry import MODELS

from .clip_loader import build_open_clip
from .heads import OrdinalHead


@MODELS.register_module()
class NumCLIP(ImageClassifier):
    """``backbone`` (image tower) -> ``neck`` (adapter) -> ``head`` (prompts, text tower, regressor, losses).

    Args:
        clip: ``dict(model_name=..., pretrained=..., cache_dir=..., quick_gelu=...)``: the CLIP model both towers
            come from, loaded once. ``--cfg-options model.clip.pretrained=PATH`` switches both.
        backbone / neck / head: configs as in ``ImageClassifier``. The head must be an :class:`OrdinalHead`: it gets
            the open_clip model as ``clip_model`` (as the backbone does), and the backbone's ``embed_dim`` fills
            ``in_channels`` of the neck and head.
    """

    def __init__(self, backbone: dict, clip: Optional[dict] = None, neck: Optional[dict] = None,
                 head: Optional[dict] = None, **kwargs):
        clip_model = build_open_clip(**clip) if clip is not None else None
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


def _drop_none(**kwargs) -> dict:
    return {k: v for k, v in kwargs.items() if v is not None}
