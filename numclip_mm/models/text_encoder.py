"""CLIP's frozen text transformer, fed with prompt *embeddings* rather than token ids (CoOp-style)."""
from typing import List, Optional

import open_clip
import torch
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS

from .clip_loader import CLIPSource


@MODELS.register_module()
class OpenCLIPTextEncoder(BaseModule):
    """Token embedding, positional embedding, causal transformer, final LayerNorm and projection of a CLIP model.

    All weights are frozen (NumCLIP learns the prompt tokens, never the encoder). ``forward`` reads the feature at
    each prompt's EOS position and projects it into the joint space; the head normalises.

    Args: as :class:`OpenCLIPVisionBackbone`; ``clip_model`` shares one CLIP model with the image tower.
    """

    def __init__(self, model_name: str = 'ViT-B-16', pretrained: Optional[str] = None,
                 cache_dir: Optional[str] = None, quick_gelu: Optional[bool] = None,
                 clip_model: Optional[torch.nn.Module] = None, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.clip_source = None if clip_model is not None else CLIPSource(model_name, pretrained, cache_dir,
                                                                          quick_gelu)
        clip_model = clip_model if clip_model is not None else self.clip_source.model
        self._clip_logit_scale = (clip_model.logit_scale,)  # CLIP's own parameter (a tuple: not registered here)
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
        """After the CLIP weights were applied (here when this encoder owns its CLIP, else by :class:`NumCLIP`):
        refresh the temperature copied from CLIP's ``logit_scale``; never a re-initialisation."""
        if self.is_init:
            return
        with torch.no_grad():
            if self.clip_source is not None:
                self.clip_source.load()
            self.logit_scale.copy_(self._clip_logit_scale[0].detach().reshape(()))
        self.is_init = True

    @property
    def width(self) -> int:
        return int(self.token_embedding.weight.shape[1])

    @property
    def embed_dim(self) -> int:
        proj = self.text_projection
        return int(proj.weight.shape[0] if isinstance(proj, torch.nn.Linear) else proj.shape[1])

    def tokenize(self, texts: List[str]) -> torch.Tensor:
        """BPE ids padded to this model's context length: ``[SOS] ... [EOS] 0 ...``; a CPU tensor, also while the
        model is built under a ``torch.device`` context (the meta-device skeleton)."""
        with torch.device('cpu'):
            return open_clip.tokenize(texts, context_length=self.context_length)

    def forward(self, prompts: torch.Tensor, eos_index: torch.Tensor) -> torch.Tensor:
        """``prompts``: (K, L, D) token embeddings; ``eos_index``: (K,) position of EOS. Returns (K, E)."""
        x = prompts + self.positional_embedding.to(prompts.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eos_index]
        proj = self.text_projection
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
