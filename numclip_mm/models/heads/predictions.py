"""What every ordinal head shares: reading targets from, and writing predictions into, ``DataSample``s."""
from typing import List, Optional, Sequence, Tuple

import torch
from mmpretrain.structures import DataSample


def gather_targets(data_samples: Sequence[DataSample], device, need_values: bool = True
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Bin labels (B,) and numeric values (B,) of a batch; a clear error if ``gt_value`` was not packed."""
    labels = torch.cat([s.gt_label for s in data_samples]).to(device)
    if not need_values:
        return labels, None
    if not all('gt_value' in s for s in data_samples):
        raise KeyError("data samples carry no 'gt_value': end the pipeline with "
                       "dict(type='PackInputs', algorithm_keys=['gt_value'])")
    values = torch.as_tensor([float(s.gt_value) for s in data_samples], dtype=torch.float32, device=device)
    return labels, values


def pack_predictions(probs: torch.Tensor, values: torch.Tensor,
                     data_samples: Optional[Sequence[DataSample]] = None) -> List[DataSample]:
    """Write ``pred_score`` (bin probabilities), ``pred_label`` (argmax bin) and ``pred_value`` (the number)."""
    probs, values = probs.detach(), values.detach()
    labels = probs.argmax(dim=1, keepdim=True)
    if data_samples is None:
        data_samples = [DataSample() for _ in range(probs.shape[0])]
    for sample, score, label, value in zip(data_samples, probs, labels, values):
        sample.set_pred_score(score).set_pred_label(label)
        sample.set_field(value, 'pred_value', dtype=torch.Tensor)
    return list(data_samples)
