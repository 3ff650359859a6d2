"""Build an open_clip CLIP model offline: random init, a local checkpoint file, or a tag found in a local cache.

Nothing here downloads. ``pretrained`` may be
- ``None``: random initialisation (tests, the embedded demo);
- a file path: an open_clip/OpenAI state dict (``.pt``/``.bin``, weights-only), a ``.safetensors`` file or OpenAI's
  TorchScript archive;
- a tag (``'openai'``, ``'laion2b_s34b_b88k'``, ...): open_clip's registry names the file, which must already be in
  ``cache_dir`` (default ``~/.cache/clip``) or in the Hugging Face cache (looked up with ``local_files_only``).
"""
import os
from pathlib import Path
from typing import Optional

import open_clip
import torch
from open_clip.factory import load_state_dict

from ..utils.checkpoint import CheckpointMismatchError, check_state_dict

_CONFIG_DIR = Path(__file__).parent / 'model_configs'
open_clip.add_model_config(_CONFIG_DIR)  # tiny configs for tests and the embedded demo
TINY_MODELS = tuple(sorted(p.stem for p in _CONFIG_DIR.glob('*.json')))


def default_cache_dir() -> str:
    return os.environ.get('NUMCLIP_CLIP_CACHE', os.path.expanduser('~/.cache/clip'))


def resolve_pretrained(model_name: str, pretrained: Optional[str], cache_dir: Optional[str] = None) -> Optional[str]:
    """Turn ``pretrained`` into a local file path (or None) without touching the network."""
    if not pretrained:
        return None
    if os.path.isfile(pretrained):
        return pretrained
    if os.sep in pretrained or pretrained.endswith(('.pt', '.pth', '.bin', '.safetensors')):
        raise FileNotFoundError(f'CLIP checkpoint file not found: {pretrained}')
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(f'{pretrained!r} is neither a file nor a known open_clip tag of {model_name!r} '
                         f'(known tags: {tags})')
    cache_dir = cache_dir or default_cache_dir()
    searched = []
    if cfg.get('url'):
        candidate = os.path.join(cache_dir, os.path.basename(cfg['url']))
        searched.append(candidate)
        if os.path.isfile(candidate):
            return candidate
    if cfg.get('hf_hub'):
        repo_id, filename = os.path.split(cfg['hf_hub'])
        searched.append(f'Hugging Face cache: {repo_id}/{filename or "open_clip_pytorch_model.bin"}')
        try:
            from huggingface_hub import hf_hub_download
            return hf_hub_download(repo_id, filename or 'open_clip_pytorch_model.bin', local_files_only=True)
        except Exception:  # noqa: BLE001  (not cached, or huggingface_hub missing: report below)
            pass
    raise FileNotFoundError(f'weights for {model_name}/{pretrained} are not in the local cache (searched: '
                            f'{searched}); numclip-mm never downloads: put the file there or pass its path')


def load_clip_weights(model: torch.nn.Module, path: str) -> None:
    """Load a CLIP checkpoint strictly (weights-only unpickling for ``.pt``/``.bin``)."""
    try:
        state = load_state_dict(path, weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise CheckpointMismatchError(f'cannot read CLIP checkpoint {path}: {err}') from err
    if 'logit_scale' in state and state['logit_scale'].ndim != model.logit_scale.ndim:
        state['logit_scale'] = state['logit_scale'].reshape(model.logit_scale.shape)
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)


def build_open_clip(model_name: str, pretrained: Optional[str] = None, cache_dir: Optional[str] = None,
                    quick_gelu: Optional[bool] = None) -> torch.nn.Module:
    """An open_clip ``CLIP`` with the requested weights, on CPU, in fp32.

    ``quick_gelu`` must match how the weights were trained: True for OpenAI's checkpoints (the default when
    ``pretrained='openai'``), the model config's own choice otherwise.
    """
    if model_name not in open_clip.list_models():
        raise ValueError(f'unknown open_clip model {model_name!r}; tiny ones for tests: {TINY_MODELS}')
    path = resolve_pretrained(model_name, pretrained, cache_dir)
    if quick_gelu is None:
        quick_gelu = pretrained == 'openai'
    model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
    if not hasattr(model, 'transformer'):
        raise ValueError(f'{model_name} has a custom text tower; NumCLIP needs a CLIP-style text transformer')
    if path is not None:
        load_clip_weights(model, path)
    return model
