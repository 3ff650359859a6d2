"""CLIP-Adapter style residual bottleneck on the image feature (NumCLIP's image branch, docs/method.md §4)."""
from typing import Tuple

import torch
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS
from torch import nn


@MODELS.register_module()
class ResidualAdapter(BaseModule):
    """``f' = ratio * g(f) + (1 - ratio) * f`` with ``g(f) = ReLU(W_up ReLU(W_down f))``, no biases.

    Args:
        in_channels: feature width; :class:`NumCLIP` fills it from the backbone, so nothing is hard-coded.
        reduction: bottleneck factor (512 -> 128 for ViT-B/16 with the default 4).
        ratio: weight of the adapted branch (0.8 in the released code).
    """

    def __init__(self, in_channels: int, reduction: int = 4, ratio: float = 0.8, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f'ratio must be in [0, 1], got {ratio}')
        hidden = max(1, in_channels // reduction)
        self.ratio = ratio
        self.down = nn.Linear(in_channels, hidden, bias=False)
        self.up = nn.Linear(hidden, in_channels, bias=False)

    def forward(self, inputs: Tuple[torch.Tensor]) -> Tuple[torch.Tensor]:
        f = inputs[-1]
        g = torch.relu(self.up(torch.relu(self.down(f))))
        return (self.ratio * g + (1.0 - self.ratio) * f,)
