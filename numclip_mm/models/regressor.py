"""NumCLIP's fine stage: a soft-stagewise (SSR-Net style) regressor on the K bin logits (docs/method.md §6)."""
from typing import Sequence

import torch
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS
from torch import nn


@MODELS.register_module()
class SSRRegressor(BaseModule):
    """``y = sum_k p_k * a_k / (1 + lam * delta_k)``, ``p = softmax(l)``, ``delta = tanh(W2 ReLU(W1 l + b1) + b2)``.

    Input is only the K logits ``l`` (not the image feature), as in the released code. Weights start at
    N(0, 0.001^2) and biases at 0, so ``delta ~ 0`` and the first prediction is the expectation ``sum_k p_k a_k``.

    Args:
        anchors: the K bin anchors ``a`` (bin lower edges for age, grade indices for graded tasks).
        lam: the dynamic-range factor lambda (1 in the code).
        hidden_factor: hidden width as a multiple of K (2 in the code).
    """

    def __init__(self, anchors: Sequence[float], lam: float = 1.0, hidden_factor: int = 2, init_std: float = 1e-3,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        k = len(anchors)
        if not 0.0 < lam <= 1.0:
            raise ValueError(f'lam must be in (0, 1] so that 1 + lam * tanh(.) stays positive, got {lam}')
        self.lam = lam
        self.register_buffer('anchors', torch.as_tensor(anchors, dtype=torch.float32))
        self.fc1 = nn.Linear(k, hidden_factor * k)
        self.fc2 = nn.Linear(hidden_factor * k, k)
        for layer in (self.fc1, self.fc2):
            nn.init.normal_(layer.weight, std=init_std)
            nn.init.zeros_(layer.bias)

    def init_weights(self):
        """Initialised at construction as in the method; the Runner's init must not redo it."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(dim=-1)
        delta = torch.tanh(self.fc2(torch.relu(self.fc1(logits))))
        # tanh reaches exactly -1 in float32 for inputs below about -9: keep the divisor positive (the open
        # interval of the formula), otherwise the zero anchor gives 0/0.
        scale = (1.0 + self.lam * delta).clamp(min=torch.finfo(delta.dtype).eps)
        return (probs * self.anchors.to(probs.dtype) / scale).sum(dim=-1)
