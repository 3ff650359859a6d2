"""The plain-regression baseline: a linear layer from the image feature straight to the number."""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from torch import nn

from ...tasks import get_task
from .predictions import gather_targets, pack_predictions


@MODELS.register_module()
class OrdinalRegressionHead(BaseModule):
    """``y = w^T f + b`` trained with ``loss`` (L1 by default); the bin is the one ``y`` falls in (clamped to the
    task's range) and ``pred_score`` is its one-hot, so the same ordinal metrics apply.

    Args:
        task: the :class:`OrdinalTask`; the bias starts at the mean anchor to shorten the first epochs.
        in_channels: feature width (filled by :class:`NumCLIP` from the backbone).
    """

    def __init__(self, task, in_channels: int, loss: dict = dict(type='L1RegressionLoss'), init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.task = get_task(task)
        self.fc = nn.Linear(in_channels, 1)
        nn.init.normal_(self.fc.weight, std=1e-3)
        nn.init.constant_(self.fc.bias, sum(self.task.anchors) / self.task.num_bins)
        self.loss_module = MODELS.build(loss)
        self.register_buffer('edges', torch.tensor(self.task.edges, dtype=torch.float32), persistent=False)

    def init_weights(self):
        """Initialised at construction."""

    def forward(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        return self.fc(feats[-1]).squeeze(-1)

    def loss(self, feats: Tuple[torch.Tensor], data_samples: Sequence[DataSample]) -> dict:
        _, values = gather_targets(data_samples, feats[-1].device)
        return dict(loss_reg=self.loss_module(self(feats), values))

    def predict_arrays(self, feats: Tuple[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """One-hot bin scores (B, K) and numbers (B,)."""
        values = self(feats)
        bins = (torch.searchsorted(self.edges, values.detach().contiguous(), right=True) - 1).clamp(min=0)
        return F.one_hot(bins, self.task.num_bins).to(values.dtype), values

    def predict(self, feats: Tuple[torch.Tensor], data_samples: Optional[Sequence[DataSample]] = None
                ) -> List[DataSample]:
        return pack_predictions(*self.predict_arrays(feats), data_samples)
