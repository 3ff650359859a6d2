"""L1 loss on the fine prediction, in the task's raw units (years, grades)."""
import torch
from mmpretrain.registry import MODELS
from torch import nn


@MODELS.register_module()
class L1RegressionLoss(nn.Module):
    """``mean_b |y_hat_b - y_b|`` times ``loss_weight``."""

    def __init__(self, loss_weight: float = 1.0):
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_weight * (pred - target.to(pred.dtype)).abs().mean()
