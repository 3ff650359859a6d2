"""NumCLIP's coarse-to-fine head: cosine logits against K text prototypes, then a regressor to the number
(docs/method.md §5-§8)."""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from .ordinal_head import OrdinalHead

PREDICTION_MODES = ('regressor', 'expectation', 'argmax')


def _build_if_configured(cfg: Optional[dict], **default_args):
    return None if cfg is None else MODELS.build(cfg, default_args=default_args)


@MODELS.register_module()
class NumCLIPHead(OrdinalHead):
    """Coarse stage ``l = s * v t^T`` over the K concept prototypes; fine stage ``y = regressor(l)``.

    Losses (each optional, ``None`` switches it off for ablations): ``i2t_loss`` on (l, bin), ``t2i_loss`` on
    (l, bin), ``reg_loss`` on (y, value). The final number is chosen by ``prediction``: ``'regressor'`` (age),
    ``'expectation'`` ``sum_k p_k a_k`` or ``'argmax'`` ``a_argmax`` (graded tasks such as HCI and aesthetics).

    Text prototypes are cached whenever they cannot change within a step (frozen prompts, or eval mode). The cache
    key holds the version counters of every text-side tensor, so an optimiser step or ``load_state_dict`` on the
    prompts invalidates it.

    Args:
        task / in_channels / clip_model / clamp: see :class:`OrdinalHead`; ``in_channels`` is checked against the
            text embedding width, ``clip_model`` gives the text tower.
        logit_scale: fixed ``s``; None keeps CLIP's own (frozen) value.
    """

    def __init__(self, task, text_encoder: dict = dict(type='OpenCLIPTextEncoder'),
                 prompt_learner: dict = dict(type='ConceptPromptLearner'),
                 regressor: Optional[dict] = dict(type='SSRRegressor'),
                 i2t_loss: Optional[dict] = dict(type='FCRCImageTextLoss'),
                 t2i_loss: Optional[dict] = dict(type='FCRCTextImageLoss'),
                 reg_loss: Optional[dict] = dict(type='L1RegressionLoss'),
                 prediction: str = 'regressor', logit_scale: Optional[float] = None,
                 in_channels: Optional[int] = None, clip_model=None, clamp: bool = True, init_cfg=None):
        super().__init__(task, in_channels=in_channels, clip_model=clip_model, clamp=clamp, init_cfg=init_cfg)
        if prediction not in PREDICTION_MODES:
            raise ValueError(f'prediction must be one of {PREDICTION_MODES}, got {prediction!r}')
        if regressor is None and (prediction == 'regressor' or reg_loss is not None):
            raise ValueError("prediction='regressor' and reg_loss need a regressor; without one use "
                             "prediction='expectation' or 'argmax' and reg_loss=None")
        self.prediction = prediction
        k = self.task.num_bins
        self.text_encoder = MODELS.build(text_encoder, default_args=dict(clip_model=clip_model))
        if in_channels is not None and in_channels != self.text_encoder.embed_dim:
            raise ValueError(f'image features have width {in_channels} but text prototypes '
                             f'{self.text_encoder.embed_dim}: the towers must come from one CLIP model')
        self.prompt_learner = MODELS.build(prompt_learner,
                                           default_args=dict(text_encoder=self.text_encoder, task=self.task))
        self.regressor = None if regressor is None else MODELS.build(
            regressor, default_args=dict(anchors=self.task.anchors))
        self.i2t_loss = _build_if_configured(i2t_loss, num_classes=k)
        self.t2i_loss = _build_if_configured(t2i_loss, num_classes=k)
        self.reg_loss = _build_if_configured(reg_loss)
        self.fixed_logit_scale = logit_scale
        self.register_buffer('logit_scale', self._scale())
        self.register_buffer('anchors', self.task.anchors_tensor(), persistent=False)
        self._cache_key = None
        self._cache = None

    def _scale(self) -> torch.Tensor:
        if self.fixed_logit_scale is None:
            return self.text_encoder.logit_scale.exp().float()
        return torch.tensor(float(self.fixed_logit_scale))

    def init_weights(self):
        """After the CLIP weights were applied (:meth:`NumCLIP.init_weights`): the text encoder, then the prompts
        from its token embedding, then ``s`` from its temperature; the regressor keeps its construction init."""
        if self.is_init:
            return
        self.text_encoder.init_weights()
        self.prompt_learner.init_weights()
        with torch.no_grad():
            self.logit_scale.copy_(self._scale())
        self.is_init = True

    # -- text side -------------------------------------------------------------------------------------------
    def _text_tensors(self) -> List[torch.Tensor]:
        return [*self.prompt_learner.parameters(), *self.prompt_learner.buffers(),
                *self.text_encoder.parameters()]

    def _text_trainable(self) -> bool:
        return any(t.requires_grad for t in self._text_tensors())

    def _compute_prototypes(self) -> torch.Tensor:
        features = self.text_encoder(self.prompt_learner(), self.prompt_learner.eos_index)
        return F.normalize(features, dim=-1)

    def text_prototypes(self) -> torch.Tensor:
        """The K L2-normalised text features ``t_k``; recomputed with grad only when prompts train this step."""
        if self.training and torch.is_grad_enabled() and self._text_trainable():
            self._cache_key = self._cache = None
            return self._compute_prototypes()
        tensors = self._text_tensors()
        # inference-mode tensors cannot enter autograd later, so they are cached apart from normal ones
        key = tuple((t.data_ptr(), t._version) for t in tensors) + (
            tensors[0].device, tensors[0].dtype, torch.is_inference_mode_enabled())
        if key != self._cache_key:
            with torch.no_grad():
                self._cache = self._compute_prototypes()
            self._cache_key = key
        return self._cache

    # -- mmpretrain head API ---------------------------------------------------------------------------------
    def pre_logits(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        return F.normalize(feats[-1], dim=-1)

    def forward(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        """Coarse logits ``s * v t^T`` of shape (B, K)."""
        image = self.pre_logits(feats)
        return self.logit_scale * image @ self.text_prototypes().to(image.dtype).t()

    def value_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The number of each row of logits, chosen by ``prediction`` (docs/method.md §7)."""
        if self.prediction == 'regressor':
            return self.regressor(logits)
        anchors = self.anchors.to(logits.dtype)
        if self.prediction == 'expectation':
            return logits.softmax(dim=-1) @ anchors
        return anchors[logits.argmax(dim=-1)]

    def loss(self, feats: Tuple[torch.Tensor], data_samples: Sequence[DataSample]) -> dict:
        logits = self(feats)
        labels, values = self.gather_targets(data_samples, logits.device, need_values=self.reg_loss is not None)
        if labels.min() < 0 or labels.max() >= logits.shape[1]:
            raise ValueError(f'gt_label {labels.tolist()} outside the {logits.shape[1]} bins of task '
                             f'{self.task.name!r}: the dataset and the head must use the same task')
        losses = {}
        if self.i2t_loss is not None:
            losses['loss_i2t'] = self.i2t_loss(logits, labels)
        if self.t2i_loss is not None:
            losses['loss_t2i'] = self.t2i_loss(logits, labels)
        if self.reg_loss is not None:
            losses['loss_reg'] = self.reg_loss(self.regressor(logits), values)
        if not losses:
            raise ValueError('NumCLIPHead has no loss switched on: nothing to train (zero-shot configs only test)')
        return losses

    def predict_arrays(self, feats: Tuple[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Bin probabilities ``softmax(l)`` (B, K) and the numbers chosen by ``prediction`` (B,)."""
        logits = self(feats)
        return logits.softmax(dim=-1), self.value_from_logits(logits)
