"""The plain-regression baseline: a linear layer from the image feature straight to the number."""
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from torch import nn

from .ordinal_head import OrdinalHead


@MODELS.register_module()
class OrdinalRegressionHead(OrdinalHead):
    """``y = w^T f + b`` trained with ``loss`` (L1 by default); the bin is the one ``y`` falls in (clamped to the
    task's range) and ``pred_score`` is its one-hot, so the same ordinal metrics apply.

    Args:
        task / in_channels / clamp: see :class:`OrdinalHead`; the bias starts at the mean anchor to shorten the
            first epochs. ``clip_model`` is accepted by the contract and unused (no text tower).
        loss: the regression loss on ``(y, gt_value)``.
    """

    def __init__(self, task, in_channels: int, loss: dict = dict(type='L1RegressionLoss'), clip_model=None,
                 clamp: bool = True, init_cfg=None):
        super().__init__(task, in_channels=in_channels, clamp=clamp, init_cfg=init_cfg)
        self.fc = nn.Linear(in_channels, 1)
        nn.init.normal_(self.fc.weight, std=1e-3)
        nn.init.constant_(self.fc.bias, sum(self.task.anchors) / self.task.num_bins)
        self.loss_module = MODELS.build(loss)
        self.register_buffer('edges', torch.tensor(self.task.edges, dtype=torch.float32), persistent=False)

    def forward(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        return self.fc(feats[-1]).squeeze(-1)

    def loss(self, feats: Tuple[torch.Tensor], data_samples: Sequence[DataSample]) -> dict:
        _, values = self.gather_targets(data_samples, feats[-1].device)
        return dict(loss_reg=self.loss_module(self(feats), values))

    def predict_arrays(self, feats: Tuple[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """One-hot bin scores (B, K) and numbers (B,)."""
        values = self(feats)
        bins = (torch.searchsorted(self.edges, values.detach().contiguous(), right=True) - 1).clamp(min=0)
        return F.one_hot(bins, self.task.num_bins).to(values.dtype), values
