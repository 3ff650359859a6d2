"""Learnable prompts ``[SOS] ctx_1..ctx_M  class tokens  "."  [EOS]`` for each of the K bins.

Two learners share the template machinery:
- :class:`ConceptPromptLearner` (NumCLIP, CoOp, zero-shot CLIP): each bin's tokens are the embeddings of its concept
  phrase ("young adult"), independent per bin; context and concepts learnable or frozen per config.
- :class:`InterpolatedRankPromptLearner` (OrdinalCLIP): rank tokens interpolated from a few learnable base ranks.

The formulas and per-task switches: docs/method.md §3 and §9.
"""
from typing import List, Sequence

import torch
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS
from torch import nn

from ..tasks import OrdinalTask, get_task


def _token_ids(text_encoder, text: str) -> List[int]:
    """BPE ids of ``text`` without SOS/EOS."""
    ids = text_encoder.tokenize([text])[0]
    eos = int(ids.argmax())  # EOS has the largest id of the vocabulary
    return ids[1:eos].tolist()


class PromptTemplate(BaseModule):
    """Fixed token embeddings of all K prompts, with slots for the shared context and per-class tokens.

    The template is a persistent buffer: it is saved in checkpoints, so a model rebuilt without CLIP weights and
    then loaded gives the same prompts as the one that was trained. It is computed from the text encoder's token
    embedding at construction and again by :meth:`init_weights`, after the pretrained CLIP weights were applied.
    """

    def __init__(self, text_encoder, context: str, class_token_ids: Sequence[Sequence[int]],
                 num_random_context: int = 0, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        sos, eos = text_encoder.tokenize([''])[0][:2].tolist()
        dot = _token_ids(text_encoder, '.')
        ctx_ids = _token_ids(text_encoder, ' '.join(['X'] * num_random_context)) if num_random_context \
            else _token_ids(text_encoder, context)
        length = text_encoder.context_length
        rows, cols, eos_index, sequences = [], [], [], []
        for k, cls_ids in enumerate(class_token_ids):
            seq = [sos, *ctx_ids, *cls_ids, *dot, eos]
            if len(seq) > length:
                raise ValueError(f'prompt {k} needs {len(seq)} tokens, more than the context length {length}')
            start = 1 + len(ctx_ids)
            rows += [k] * len(cls_ids)
            cols += range(start, start + len(cls_ids))
            eos_index.append(len(seq) - 1)
            sequences.append(seq + [0] * (length - len(seq)))
        self.num_context = len(ctx_ids)
        self._token_embedding = (text_encoder.token_embedding,)  # a tuple: not a submodule of the template
        self.register_buffer('token_ids', torch.tensor(sequences), persistent=False)
        self.register_buffer('template', self._embed(), persistent=True)
        self.register_buffer('class_rows', torch.tensor(rows), persistent=False)
        self.register_buffer('class_cols', torch.tensor(cols), persistent=False)
        self.register_buffer('eos_index', torch.tensor(eos_index), persistent=False)

    def _embed(self) -> torch.Tensor:
        with torch.no_grad():
            return self._token_embedding[0](self.token_ids).float()

    def init_weights(self):
        """Recompute the template from the (now pretrained) token embedding."""
        self.template.copy_(self._embed())
        self.is_init = True

    @property
    def initial_context(self) -> torch.Tensor:
        """The context phrase's token embeddings (M, D), as the template holds them."""
        return self.template[0, 1:1 + self.num_context].clone()

    @property
    def initial_class_tokens(self) -> torch.Tensor:
        """Every class token's embedding (sum n_k, D), as the template holds them."""
        return self.template[self.class_rows, self.class_cols].clone()

    def fill(self, context: torch.Tensor, class_tokens: torch.Tensor) -> torch.Tensor:
        """Prompts (K, L, D) with ``context`` (M, D) in every row and ``class_tokens`` (sum n_k, D) in place."""
        k = self.template.shape[0]
        m = self.num_context
        prompts = torch.cat([self.template[:, :1], context.unsqueeze(0).expand(k, -1, -1),
                             self.template[:, 1 + m:]], dim=1)
        return prompts.index_put((self.class_rows, self.class_cols), class_tokens)


@MODELS.register_module()
class ConceptPromptLearner(BaseModule):
    """NumCLIP's concept prompts: ``[SOS] <context> <concept_k> . [EOS]``.

    Args:
        text_encoder: the :class:`OpenCLIPTextEncoder` (tokenizer and token embedding; not kept as a submodule).
        task: the :class:`OrdinalTask` giving ``concepts`` and ``context``.
        learn_context / learn_concepts: which token embeddings train (age, HCI: concepts only; aesthetics: both;
            CoOp: context; zero-shot: neither). Frozen ones stay Parameters with ``requires_grad=False``.
        num_random_context: >0 replaces the context phrase by that many N(0, 0.02^2) tokens (CoOp's random init).
    """

    def __init__(self, text_encoder, task, learn_context: bool = False, learn_concepts: bool = True,
                 num_random_context: int = 0, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        task: OrdinalTask = get_task(task)
        self.prompt = PromptTemplate(text_encoder, task.context, [_token_ids(text_encoder, c) for c in task.concepts],
                                     num_random_context)
        context = self.prompt.initial_context
        self.random_context = bool(num_random_context)
        if num_random_context:
            context = torch.randn_like(context) * 0.02
        self.context = nn.Parameter(context, requires_grad=learn_context)
        self.concepts = nn.Parameter(self.prompt.initial_class_tokens, requires_grad=learn_concepts)

    def init_weights(self):
        """Context and concept tokens from CLIP's token embeddings, after the pretrained CLIP weights were applied
        (the Runner's init_weights order: :class:`NumCLIP` first, then its parts); a random context keeps its
        draw."""
        self.prompt.init_weights()
        with torch.no_grad():
            if not self.random_context:
                self.context.copy_(self.prompt.initial_context)
            self.concepts.copy_(self.prompt.initial_class_tokens)
        self.is_init = True

    @property
    def eos_index(self) -> torch.Tensor:
        return self.prompt.eos_index

    def forward(self) -> torch.Tensor:
        return self.prompt.fill(self.context, self.concepts)


def rank_interpolation_weights(num_ranks: int, num_base_ranks: int, kind: str = 'linear') -> torch.Tensor:
    """OrdinalCLIP's (num_ranks, num_base_ranks) weights, rows summing to 1.

    Base ranks sit at ``linspace(0, C-1, K_b)``; rank c weighs base k by ``phi(|c - alpha_k|)`` with
    ``phi(d) = 1 - d/(C-1)`` (linear) or ``1/(d + 1e-5)`` (inverse-proportional).
    """
    if num_base_ranks < 2 or num_base_ranks > num_ranks:
        raise ValueError(f'need 2 <= num_base_ranks <= num_ranks, got {num_base_ranks} and {num_ranks}')
    ranks = torch.arange(num_ranks, dtype=torch.float64)[:, None]
    anchors = torch.linspace(0, num_ranks - 1, num_base_ranks, dtype=torch.float64)[None, :]
    dist = (ranks - anchors).abs()
    if kind == 'linear':
        phi = 1.0 - dist / (num_ranks - 1)
    elif kind == 'inv_prop':
        phi = 1.0 / (dist + 1e-5)
    else:
        raise ValueError(f"interpolation must be 'linear' or 'inv_prop', got {kind!r}")
    return (phi / phi.sum(1, keepdim=True)).float()


@MODELS.register_module()
class InterpolatedRankPromptLearner(BaseModule):
    """OrdinalCLIP's prompts: each rank's tokens interpolate ``num_base_ranks`` learnable base embeddings.

    Args:
        text_encoder, task: as :class:`ConceptPromptLearner`; one prompt per bin of ``task`` (use a rank task with
            one bin per value, see :func:`numclip_mm.tasks.rank_task`).
        num_base_ranks: learnable base embeddings B_k (3 in OrdinalCLIP).
        tokens_per_rank: tokens each rank occupies in its prompt.
        interpolation: 'linear' or 'inv_prop'.
        learn_context: train the shared context tokens too (OrdinalCLIP does).
    """

    def __init__(self, text_encoder, task, num_base_ranks: int = 3, tokens_per_rank: int = 1,
                 interpolation: str = 'linear', learn_context: bool = True, num_random_context: int = 0,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        task = get_task(task)
        k = task.num_bins
        placeholder = _token_ids(text_encoder, ' '.join(['X'] * tokens_per_rank))
        self.prompt = PromptTemplate(text_encoder, task.context, [placeholder] * k, num_random_context)
        context = self.prompt.initial_context
        self.random_context = bool(num_random_context)
        if num_random_context:
            context = torch.randn_like(context) * 0.02
        self.context = nn.Parameter(context, requires_grad=learn_context)
        width = self.prompt.template.shape[-1]
        self.base_ranks = nn.Parameter(torch.randn(num_base_ranks, tokens_per_rank * width) * 0.02)
        self.register_buffer('weights', rank_interpolation_weights(k, num_base_ranks, interpolation),
                             persistent=False)
        self.tokens_per_rank = tokens_per_rank

    def init_weights(self):
        """Context tokens from CLIP's token embeddings after the pretrained weights were applied (unless random);
        the base ranks keep their N(0, 0.02^2) draw from construction."""
        self.prompt.init_weights()
        if not self.random_context:
            with torch.no_grad():
                self.context.copy_(self.prompt.initial_context)
        self.is_init = True

    @property
    def eos_index(self) -> torch.Tensor:
        return self.prompt.eos_index

    def forward(self) -> torch.Tensor:
        ranks = self.weights @ self.base_ranks  # (K, T*D)
        return self.prompt.fill(self.context, ranks.reshape(-1, self.base_ranks.shape[1] // self.tokens_per_rank))
