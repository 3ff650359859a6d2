"""CLIP's frozen text transformer, fed with prompt *embeddings* rather than token ids (CoOp-style)."""
from typing import List, Optional

import open_clip
import torch
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS

from .clip_loader import build_open_clip


@MODELS.register_module()
class OpenCLIPTextEncoder(BaseModule):
    """Token embedding, positional embedding, causal transformer, final LayerNorm and projection of a CLIP model.

    All weights are frozen (NumCLIP learns the prompt tokens, never the encoder). ``forward`` reads the feature at
    each prompt's EOS position and projects it into the joint space; the head normalises.

    Args: as :class:`OpenCLIPVisionBackbone`; ``clip_model`` shares one load with the image tower.
    """

    def __init__(self, model_name: str = 'ViT-B-16', pretrained: Optional[str] = None,
                 cache_dir: Optional[str] = None, quick_gelu: Optional[bool] = None,
                 clip_model: Optional[torch.nn.Module] = None, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        clip_model = clip_model or build_open_clip(model_name, pretrained, cache_dir, quick_gelu)
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.context_length = int(clip_model.context_length)
        self.register_buffer('attn_mask', clip_model.attn_mask, persistent=False)
        # CLIP's temperature, kept frozen as in the method (s = exp(logit_scale), 100 for pretrained CLIP).
        self.register_buffer('logit_scale', clip_model.logit_scale.detach().clone().reshape(()))
        self.requires_grad_(False)

    def init_weights(self):
        """Weights come from the CLIP checkpoint; never re-initialise them."""

    @property
    def width(self) -> int:
        return int(self.token_embedding.weight.shape[1])

    @property
    def embed_dim(self) -> int:
        proj = self.text_projection
        return int(proj.weight.shape[0] if isinstance(proj, torch.nn.Linear) else proj.shape[1])

    def tokenize(self, texts: List[str]) -> torch.Tensor:
        """BPE ids padded to this model's context length: ``[SOS] ... [EOS] 0 ...``."""
        return open_clip.tokenize(texts, context_length=self.context_length)

    def forward(self, prompts: torch.Tensor, eos_index: torch.Tensor) -> torch.Tensor:
        """``prompts``: (K, L, D) token embeddings; ``eos_index``: (K,) position of EOS. Returns (K, E)."""
        x = prompts + self.positional_embedding.to(prompts.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eos_index]
        proj = self.text_projection
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
