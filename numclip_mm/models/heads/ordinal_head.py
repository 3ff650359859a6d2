"""The contract every ordinal head keeps: a task, ``predict_arrays`` (scores and numbers, batched) and one ``predict``.

:class:`NumCLIP` builds any :class:`OrdinalHead` with ``in_channels`` (the backbone's width) and ``clip_model`` (the
shared open_clip model, for heads with a text tower); the :class:`~numclip_mm.inference.Predictor` uses ``task``,
``predict_arrays`` and ``to_task_range`` only. A new head implements ``forward``, ``loss`` and ``predict_arrays``.
"""
from abc import abstractmethod
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine.model import BaseModule
from mmpretrain.models.heads import ClsHead
from mmpretrain.structures import DataSample

from ...tasks import TaskLike, get_task


class OrdinalHead(ClsHead):
    """Base of the ordinal heads: mmpretrain's ``ClsHead`` API (``pre_logits``/``forward``/``loss``/``predict``)
    plus the task and a number per sample.

    Predictions written by :meth:`predict`: ``pred_score`` (K bin scores), ``pred_value`` (the number, clamped to
    the task's range ``[edges[0], upper]`` unless ``clamp=False``), ``pred_value_raw`` (the head's own number before
    clamping; docs/method.md §7), ``pred_label`` (the bin of ``pred_value``, :meth:`OrdinalTask.nearest_bin`, so
    label and number agree by construction) and ``pred_bin_argmax`` (the arg-max bin of ``pred_score``: the coarse
    classification, which :class:`~numclip_mm.evaluation.OrdinalMetric` scores as ``accuracy``).

    Args:
        task: the :class:`~numclip_mm.tasks.OrdinalTask` (name, dict or object).
        in_channels: image feature width (filled by :class:`NumCLIP` from the backbone).
        clip_model: the open_clip model shared with the backbone (filled by :class:`NumCLIP`); heads without a text
            tower ignore it.
        clamp: clamp ``pred_value`` to the task's range (a number outside every bin means nothing for the task).
    """

    def __init__(self, task: TaskLike, in_channels: Optional[int] = None, clip_model=None, clamp: bool = True,
                 init_cfg=None):
        # ClsHead.__init__ would build a single cross-entropy ``loss_module``; ordinal heads build their own losses.
        BaseModule.__init__(self, init_cfg=init_cfg)
        self.task = get_task(task)
        self.in_channels = in_channels
        self.clamp = bool(clamp)
        self.value_range: Tuple[float, float] = self.task.value_range

    def init_weights(self):
        """Ordinal heads initialise their own layers at construction (N(0, 1e-3)); the Runner's init must not redo
        it. A head with a text tower refreshes what it derives from CLIP (:meth:`NumCLIPHead.init_weights`)."""

    @abstractmethod
    def predict_arrays(self, feats: Tuple[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Bin scores (B, K) summing to 1 and the head's own numbers (B,), unclamped; batched, no per-sample work."""

    @staticmethod
    def gather_targets(data_samples: Sequence[DataSample], device, need_values: bool = True
                       ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Bin labels (B,) and numbers (B,) of a batch; a clear error if ``gt_value`` was not packed."""
        labels = torch.cat([s.gt_label for s in data_samples]).to(device)
        if not need_values:
            return labels, None
        if not all('gt_value' in s for s in data_samples):
            raise KeyError("data samples carry no 'gt_value': end the pipeline with "
                           "dict(type='PackInputs', algorithm_keys=['gt_value'])")
        values = torch.as_tensor([float(s.gt_value) for s in data_samples], dtype=torch.float32, device=device)
        return labels, values

    def to_task_range(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` clamped to the task's range when ``clamp`` is on, else unchanged."""
        if not self.clamp:
            return values
        low, high = self.value_range
        return values.clamp(min=low, max=high)

    def predict(self, feats: Tuple[torch.Tensor], data_samples: Optional[Sequence[DataSample]] = None
                ) -> List[DataSample]:
        probs, raw = self.predict_arrays(feats)
        probs, raw = probs.detach(), raw.detach()
        values = self.to_task_range(raw)
        labels = torch.from_numpy(self.task.nearest_bin(values.float().cpu().numpy())).view(-1, 1)
        argmax = probs.argmax(dim=1, keepdim=True)
        if data_samples is None:
            data_samples = [DataSample() for _ in range(probs.shape[0])]
        for sample, score, label, top, value, value_raw in zip(data_samples, probs, labels, argmax, values, raw):
            sample.set_pred_score(score).set_pred_label(label)
            sample.set_field(top, 'pred_bin_argmax', dtype=torch.Tensor)
            sample.set_field(value, 'pred_value', dtype=torch.Tensor)
            sample.set_field(value_raw, 'pred_value_raw', dtype=torch.Tensor)
        return list(data_samples)
