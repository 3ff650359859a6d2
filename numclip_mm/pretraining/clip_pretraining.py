"""Contrastive (CLIP) pretraining of a small open_clip model on generated pairs, on CPU, deterministic by seed.

The loss is open_clip's own :class:`open_clip.loss.ClipLoss` (symmetric InfoNCE with the learnable temperature),
optimised as open_clip's training recipe does: AdamW (betas 0.9/0.98, eps 1e-6), no weight decay on gains, biases,
embeddings and the temperature, linear warm-up then cosine decay. Images are normalised with the statistics the
NumCLIP configs' data preprocessor uses (ImageNet mean/std of RGB), so the image tower sees the same input
distribution in pretraining and in NumCLIP training. The weights are written as fp16 safetensors, the format
:func:`numclip_mm.models.clip_loader.read_clip_state_dict` reads (it returns fp32).
"""
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional

import numpy as np
import open_clip
import torch

from ..models.clip_loader import build_open_clip
from .synthetic_pairs import captions, check_not_task_prompt, generate_pairs

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # as configs/_base_/models/numclip_vit_b16.py's data_preprocessor
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass
class PretrainConfig:
    model_name: str = 'numclip-demo'
    num_pairs: int = 12000
    steps: int = 300
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 30
    seed: int = 0
    image_size: int = 64


def _param_groups(model: torch.nn.Module, weight_decay: float):
    """open_clip's split: 1-D parameters (gains, biases), embeddings and ``logit_scale`` get no weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or 'embedding' in name or 'logit_scale' in name or name.endswith('class_embedding'):
            no_decay.append(p)
        else:
            decay.append(p)
    return [dict(params=no_decay, weight_decay=0.0), dict(params=decay, weight_decay=weight_decay)]


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


def to_input(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> normalised (N, 3, H, W) float32."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def pretrain(cfg: PretrainConfig, log: Optional[Callable[[str], None]] = print) -> (torch.nn.Module, Dict):
    """Train ``cfg.model_name`` from random init on ``cfg.num_pairs`` generated pairs; returns the model and a
    summary (config, losses, seconds). Captions are re-drawn each step (several captions per image), flips applied."""
    torch.manual_seed(cfg.seed)
    start = time.time()
    images, attributes = generate_pairs(cfg.num_pairs, cfg.image_size, cfg.seed)
    gen_s = time.time() - start
    model = build_open_clip(cfg.model_name, pretrained=None)
    model.train()
    tokenizer = open_clip.get_tokenizer(cfg.model_name)
    loss_fn = open_clip.loss.ClipLoss()
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 8]))
    losses = []
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group['lr'] = _lr_at(step, cfg)
        idx = rng.choice(cfg.num_pairs, cfg.batch_size, replace=False)
        batch = images[idx]
        flip = rng.random(cfg.batch_size) < 0.5
        batch[flip] = batch[flip, :, ::-1]
        texts = captions([attributes[i] for i in idx], rng)
        if step == 0:
            check_not_task_prompt(texts)
        image_features, text_features, logit_scale = model(to_input(batch), tokenizer(texts))
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # open_clip clamps the temperature at 100 after each step
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if log and (step % 50 == 0 or step == cfg.steps - 1):
            log(f'step {step + 1}/{cfg.steps} loss {np.mean(losses[-50:]):.3f} '
                f'scale {model.logit_scale.exp().item():.1f} ({time.time() - start:.0f} s)')
    model.eval()
    summary = dict(config=asdict(cfg), final_loss=float(np.mean(losses[-50:])), first_loss=losses[0],
                   logit_scale=model.logit_scale.exp().item(), generate_s=round(gen_s, 1),
                   total_s=round(time.time() - start, 1), torch_threads=torch.get_num_threads())
    return model, summary


def save_weights(model: torch.nn.Module, path: str, metadata: Optional[Dict[str, str]] = None) -> str:
    """The state dict as fp16 safetensors (half the size; the loader returns fp32)."""
    from safetensors.torch import save_file
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, path, metadata={k: str(v) for k, v in (metadata or {}).items()})
    return path
