"""Fine-grained cross-modal ranking-based contrastive (FCRC) losses, fully vectorised (docs/method.md §8.1-8.3)."""
import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS
from torch import nn


def ordinal_distance_weights(num_classes: int) -> torch.Tensor:
    """The K x K table ``w(c, j) = (K-1) |c-j| / sum_k |c-k|`` for ``j != c`` and ``w(c, c) = 1`` (float64).

    Each row's negatives sum to K-1 (mean 1) and grow linearly with ordinal distance.
    """
    idx = torch.arange(num_classes, dtype=torch.float64)
    dist = (idx[:, None] - idx[None, :]).abs()
    weights = (num_classes - 1) * dist / dist.sum(dim=1, keepdim=True)
    weights.fill_diagonal_(1.0)
    return weights


@MODELS.register_module()
class FCRCImageTextLoss(nn.Module):
    """Image -> text FCRC: cross-entropy over the K prototypes with distance-weighted negatives.

    ``form='code'`` (default, the released code): ``CE(w(c_b, .) * l_b, c_b)`` -- the weight scales the logit.
    ``form='paper'``: ``-log e^{l_c} / (e^{l_c} + sum_{j != c} w(c, j) e^{l_j})`` -- the weight scales the
    exponentiated similarity, i.e. ``CE(l_b + log w(c_b, .), c_b)``.
    ``distance_weighted=False`` gives the plain CE of CoOp/OrdinalCLIP.
    """

    def __init__(self, num_classes: int, distance_weighted: bool = True, form: str = 'code',
                 loss_weight: float = 1.0):
        super().__init__()
        if form not in ('code', 'paper'):
            raise ValueError(f"form must be 'code' or 'paper', got {form!r}")
        self.form = form
        self.distance_weighted = distance_weighted
        self.loss_weight = loss_weight
        self.register_buffer('weights', ordinal_distance_weights(num_classes), persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.distance_weighted:
            w = self.weights[labels].to(logits.dtype)
            logits = logits * w if self.form == 'code' else logits + w.log()
        return self.loss_weight * F.cross_entropy(logits, labels)


@MODELS.register_module()
class FCRCTextImageLoss(nn.Module):
    """Text -> image FCRC: for each class j present in the batch, KL(q_j || softmax_b(u_jb * l_bj)).

    ``q_j = softmax_b(sharpness * [c_b = j])`` spreads the target over the images of class j. The weights
    ``u_jb = (K-1) |j - c_b| / sum_b' |j - c_b'|`` (1 on positives) are normalised over the batch images, as in the
    released code; a row whose images are all of class j has a zero denominator and gets all weights 1. Classes
    absent from the batch contribute nothing; the loss is the mean over present classes.
    ``distance_weighted=False`` gives OrdinalCLIP's plain text->image KL.
    """

    def __init__(self, num_classes: int, distance_weighted: bool = True, sharpness: float = 10.0,
                 loss_weight: float = 1.0):
        super().__init__()
        self.num_classes = num_classes
        self.distance_weighted = distance_weighted
        self.sharpness = sharpness
        self.loss_weight = loss_weight

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        classes = torch.arange(self.num_classes, device=labels.device)
        positive = labels[None, :] == classes[:, None]  # (K, B)
        present = positive.any(dim=1)
        text_logits = logits.t()  # (K, B)
        if self.distance_weighted:
            dist = (classes[:, None] - labels[None, :]).abs().to(logits.dtype)
            denom = dist.sum(dim=1, keepdim=True)
            weights = (self.num_classes - 1) * dist / denom.clamp(min=1)
            weights = torch.where(positive | (denom == 0), torch.ones_like(weights), weights)
            text_logits = text_logits * weights
        target = (self.sharpness * positive.to(logits.dtype)).softmax(dim=1)
        kl = F.kl_div(text_logits.log_softmax(dim=1), target, reduction='none').sum(dim=1)
        return self.loss_weight * kl[present].mean()
