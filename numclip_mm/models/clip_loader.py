"""Build an open_clip CLIP model offline, and apply its pretrained weights (a local file, or a tag found in a cache).

Building is not loading: :func:`clip_architecture` allocates the model (open_clip's random init) and reads no weights;
:func:`load_pretrained` applies ``pretrained`` to it (what :meth:`NumCLIP.init_weights` does before training, and
zero-shot inference); :func:`build_open_clip` does both. Nothing here downloads. ``pretrained`` may be
- ``None``: random initialisation (tests, the embedded demo);
- a file path, in any of the formats CLIP weights are published in (told apart by content, not by extension):
  OpenAI's TorchScript archive (``ViT-B-16.pt``), open_clip/Hugging Face ``open_clip_pytorch_model.bin`` (a pickled
  state dict, read weights-only), ``open_clip_model.safetensors``, or any plain state dict saved with ``torch.save``;
- a tag (``'openai'``, ``'laion2b_s34b_b88k'``, ...): open_clip's table names the files, which must already be in
  one of the places :func:`resolve_pretrained` searches (docs/reproducing_the_paper.md "CLIP weights" lists them);
- a tag of weights shipped inside this package (:data:`PACKAGED_WEIGHTS`: ``'numclip-tiny-synth'`` for
  ``numclip-demo``, docs/pretrained_tiny_clip.md).

Weights always come back as fp32 (OpenAI's files hold fp16): precision is decided at run time by the optimizer
wrapper (AMP), not by the file.
"""
import math
import os
import warnings
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

import open_clip
import torch

from ..utils.checkpoint import (
    CheckpointLoadError,
    CheckpointMismatchError,
    check_state_dict,
    load_weights_only,
    model_state_dict,
)

_CONFIG_DIR = Path(__file__).parent / 'model_configs'
open_clip.add_model_config(_CONFIG_DIR)  # tiny configs for tests and the embedded demo
TINY_MODELS = tuple(sorted(p.stem for p in _CONFIG_DIR.glob('*.json')))

# Entries of OpenAI's archives that are not weights of open_clip's CLIP: hyper-parameters stored as tensors, and the
# causal attention mask (a buffer open_clip rebuilds itself and does not save).
_NON_WEIGHT_KEYS = ('input_resolution', 'context_length', 'vocab_size', 'attn_mask')
# The file names open_clip's Hugging Face repos hold, in the order open_clip itself prefers them.
HF_WEIGHT_FILES = ('open_clip_model.safetensors', 'open_clip_pytorch_model.bin')
WEIGHT_SUFFIXES = ('.pt', '.pth', '.bin', '.safetensors')
# Weights that ship with the package: (model name, tag) -> file under numclip_mm/models/pretrained/.
PACKAGED_WEIGHTS = {('numclip-demo', 'numclip-tiny-synth'): 'numclip-demo-synth.safetensors'}
_PACKAGED_DIR = Path(__file__).parent / 'pretrained'


def default_cache_dir() -> str:
    """Where OpenAI-format files are looked up by file name: ``$NUMCLIP_CLIP_CACHE``, else ``~/.cache/clip``."""
    return os.environ.get('NUMCLIP_CLIP_CACHE', os.path.expanduser('~/.cache/clip'))


def hf_hub_cache_dir() -> str:
    """The Hugging Face hub cache, read from the environment at call time, as huggingface_hub resolves it:
    ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get('HF_HUB_CACHE'):
        return os.environ['HF_HUB_CACHE']
    hf_home = os.environ.get('HF_HOME') or os.path.join(
        os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'huggingface')
    return os.path.join(hf_home, 'hub')


def _find_in_hf_cache(repo_id: str, filenames) -> Optional[str]:
    """A file of ``repo_id`` at the revision ``refs/main`` points to, purely from the local cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover  (open_clip depends on huggingface_hub)
        return None
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=hf_hub_cache_dir())
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def names_a_file(pretrained: str) -> bool:
    """Whether ``pretrained`` is meant as a file (an existing file, a path, or a weights file name) and not a tag."""
    return os.path.isfile(pretrained) or os.sep in pretrained or pretrained.endswith(WEIGHT_SUFFIXES)


def resolve_pretrained(model_name: str, pretrained: Optional[str], cache_dir: Optional[str] = None) -> Optional[str]:
    """Turn ``pretrained`` into a local file path (or None) without touching the network.

    A packaged tag (:data:`PACKAGED_WEIGHTS`) is the file shipped in the package. For an open_clip tag, the places
    searched, in order:
    1. ``cache_dir`` (default :func:`default_cache_dir`) / the file name of the tag's URL (``ViT-B-16.pt`` for
       ``ViT-B-16``/``openai``), i.e. where OpenAI's ``clip`` package keeps its downloads;
    2. the Hugging Face hub cache (:func:`hf_hub_cache_dir`) for the tag's repo
       (``timm/vit_base_patch16_clip_224.openai`` for ``ViT-B-16``/``openai``):
       ``models--<org>--<name>/snapshots/<refs/main>/`` with ``open_clip_model.safetensors`` or
       ``open_clip_pytorch_model.bin``.
    """
    if not pretrained:
        return None
    if os.path.isfile(pretrained):
        return pretrained
    if names_a_file(pretrained):
        raise FileNotFoundError(f'CLIP checkpoint file not found: {pretrained}')
    if (model_name, pretrained) in PACKAGED_WEIGHTS:
        path = _PACKAGED_DIR / PACKAGED_WEIGHTS[model_name, pretrained]
        if not path.is_file():
            raise FileNotFoundError(f'the packaged weights {model_name}/{pretrained} are missing: {path} (the '
                                    f'installation is incomplete; tools/pretrain_tiny_clip.py rebuilds the file)')
        return str(path)
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        tags += [t for m, t in PACKAGED_WEIGHTS if m == model_name]
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
        parts = cfg['hf_hub'].rstrip('/').split('/')
        repo_id, filename = '/'.join(parts[:2]), '/'.join(parts[2:])
        names = (filename,) if filename else HF_WEIGHT_FILES
        hub = hf_hub_cache_dir()
        searched.append(f'{hub}/models--{repo_id.replace("/", "--")}/snapshots/<refs/main>/{"|".join(names)}')
        found = _find_in_hf_cache(repo_id, names)
        if found:
            return found
    raise FileNotFoundError(f'weights for {model_name}/{pretrained} are not in the local cache (searched: '
                            f'{searched}); numclip-mm never downloads: put the file there or pass its path')


def checkpoint_format(path: str) -> str:
    """``'torchscript'``, ``'safetensors'`` or ``'pickle'`` (a ``torch.save`` file), from the file's content.

    A TorchScript archive is a zip holding ``constants.pkl`` and a ``code/`` folder (a ``torch.save`` zip has
    neither); safetensors starts with an 8-byte little-endian header length followed by a JSON object.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith('/constants.pkl') or n == 'constants.pkl' for n in names) and any(
                '/code/' in n or n.startswith('code/') for n in names):
            return 'torchscript'
        return 'pickle'
    with open(path, 'rb') as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b'{' and 0 < int.from_bytes(head[:8], 'little') < os.path.getsize(path):
        return 'safetensors'
    return 'pickle'


def read_torchscript_weights(path: str) -> Dict[str, torch.Tensor]:
    """The state dict of a TorchScript archive (OpenAI's CLIP files).

    ``torch.jit.load`` is acceptable here although the archive is not read weights-only: TorchScript's C++ loader
    does not unpickle arbitrary Python globals (its unpickler knows only tensors, containers and TorchScript classes,
    and the archive's code is TorchScript compiled by TorchScript, not Python), and we never call the loaded module;
    only ``state_dict()`` is read. ``torch.load(weights_only=True)`` refuses such archives outright.
    """
    module = torch.jit.load(path, map_location='cpu')
    state = dict(module.state_dict())
    for key in _NON_WEIGHT_KEYS:
        state.pop(key, None)
    return state


def read_clip_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read CLIP weights from any supported file format as an fp32 state dict with open_clip's key names.

    Pickled files are read weights-only with the project's allow-list; ``{'state_dict': ...}`` wrappers (open_clip's
    training checkpoints) and DDP's ``module.`` prefix are removed.
    """
    fmt = checkpoint_format(path)
    try:
        if fmt == 'torchscript':
            state = read_torchscript_weights(path)
        elif fmt == 'safetensors':
            from safetensors.torch import load_file
            state = load_file(path, device='cpu')
        else:
            state = load_weights_only(path)
    except CheckpointLoadError:
        raise
    except Exception as err:  # noqa: BLE001  (any reader's failure becomes one clear error naming the file)
        raise CheckpointLoadError(f'cannot read CLIP checkpoint {path} (as {fmt}): {err}') from err
    if isinstance(state, dict) and isinstance(state.get('state_dict', state), dict):
        state = model_state_dict(state)  # as the Runner unwraps its checkpoints: 'state_dict', DDP's 'module.'
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointLoadError(f'CLIP checkpoint {path} holds no state dict of tensors (got {type(state).__name__})')
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def describe_vit(state: Dict[str, torch.Tensor]) -> Optional[Dict[str, int]]:
    """Patch size, width, depth, image size and embedding size of the ViT image tower a state dict holds."""
    conv = state.get('visual.conv1.weight')
    pos = state.get('visual.positional_embedding')
    if conv is None or pos is None or conv.ndim != 4:
        return None
    layers = {k.split('.')[3] for k in state if k.startswith('visual.transformer.resblocks.')}
    grid = math.isqrt(max(pos.shape[0] - 1, 0))
    proj = state.get('visual.proj')
    return dict(patch_size=int(conv.shape[-1]), width=int(conv.shape[0]), layers=len(layers),
                image_size=int(grid * conv.shape[-1]), embed_dim=int(proj.shape[1]) if proj is not None else 0)


def models_matching(arch: Dict[str, int]) -> List[str]:
    """open_clip model names whose image tower has this architecture (to name what a file holds)."""
    names = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        vision = cfg.get('vision_cfg', {})
        size = vision.get('image_size')
        if (vision.get('patch_size') == arch['patch_size'] and vision.get('width') == arch['width']
                and vision.get('layers') == arch['layers'] and size in (arch['image_size'],
                                                                       (arch['image_size'],) * 2)
                and cfg.get('embed_dim') == arch['embed_dim'] and not vision.get('timm_model_name')):
            names.append(name)
    return names


def check_architecture(model: torch.nn.Module, model_name: str, state: Dict[str, torch.Tensor], path: str) -> None:
    """Raise :class:`CheckpointMismatchError` naming both architectures when the file holds another ViT."""
    want, got = describe_vit(model.state_dict()), describe_vit(state)
    if want is None or got is None or want == got:
        return
    like = models_matching(got)
    raise CheckpointMismatchError(
        f'CLIP checkpoint {path} holds another architecture than {model_name}: the file has a ViT with '
        f'{_arch_text(got)}{f" (like {like[0]})" if like else ""}; {model_name} has {_arch_text(want)}. '
        f'Set model.clip.model_name to the file\'s model or pass the {model_name} file.')


def _arch_text(arch: Dict[str, int]) -> str:
    return (f'patch {arch["patch_size"]}, width {arch["width"]}, {arch["layers"]} layers, '
            f'image {arch["image_size"]}, embedding {arch["embed_dim"]}')


def load_clip_weights(model: torch.nn.Module, path: str, model_name: str = 'the model') -> None:
    """Load a CLIP checkpoint file (any supported format) into ``model`` strictly, as fp32."""
    state = read_clip_state_dict(path)
    if 'logit_scale' in state and state['logit_scale'].shape != model.logit_scale.shape:
        state['logit_scale'] = state['logit_scale'].reshape(model.logit_scale.shape)
    check_architecture(model, model_name, state, path)
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)


def openai_file_names(model_name: str) -> List[str]:
    """File names of OpenAI's releases of ``model_name`` in open_clip's table (``ViT-B-16.pt`` for ``ViT-B-16``)."""
    names = []
    for tag in open_clip.list_pretrained_tags_by_model(model_name):
        url = open_clip.get_pretrained_cfg(model_name, tag).get('url') or ''
        if tag.startswith('openai') and url:
            names.append(os.path.basename(url))
    return names


def default_quick_gelu(model_name: str, pretrained: Optional[str], cache_dir: Optional[str] = None) -> bool:
    """Whether the weights were trained with QuickGELU, decided by their source without reading any weight.

    - an open_clip tag: open_clip's own table says (``quick_gelu=True`` for every ``openai`` tag);
    - a file that exists: its format (the archive's directory only): a TorchScript archive is OpenAI's release
      format, and all OpenAI CLIP models use QuickGELU;
    - a file that is not there (a trained checkpoint used where the CLIP file is not: the activation must match
      training without the file): its name, when it is OpenAI's release name of this model (``ViT-B-16.pt``),
      else the model config's own activation, with a warning;
    - no ``pretrained`` or any other file: the model config's own activation (``-quickgelu`` model names turn it on);
      pass ``quick_gelu=True`` (``model.clip.quick_gelu=True``) for OpenAI weights converted to a plain state dict.
    """
    if not pretrained:
        return False
    if not names_a_file(pretrained):
        return bool((open_clip.get_pretrained_cfg(model_name, pretrained) or {}).get('quick_gelu', False))
    if os.path.isfile(pretrained):
        return checkpoint_format(pretrained) == 'torchscript'
    if os.path.basename(pretrained) in openai_file_names(model_name):
        return True
    warnings.warn(f'CLIP file {pretrained} is not there: {model_name} is built with its config\'s activation; if '
                  f'the model was trained from OpenAI weights in another file format, set model.clip.quick_gelu=True')
    return False


def clip_architecture(model_name: str, pretrained: Optional[str] = None, cache_dir: Optional[str] = None,
                      quick_gelu: Optional[bool] = None) -> torch.nn.Module:
    """An open_clip ``CLIP`` of ``model_name`` in fp32 with open_clip's random init: the architecture only, no weight
    read (``pretrained`` only picks the activation, see :func:`default_quick_gelu`). Works under a
    ``torch.device('meta')`` context (a skeleton for key/shape checks).

    The class is instantiated from open_clip's model table as ``open_clip.create_model`` does, without its device
    move and its "initialized randomly" log line: the weights come next, from :func:`load_pretrained` or a
    checkpoint.
    """
    if model_name not in open_clip.list_models():
        raise ValueError(f'unknown open_clip model {model_name!r}; tiny ones for tests: {TINY_MODELS}')
    cfg = open_clip.get_model_config(model_name)
    if cfg.pop('custom_text', False) or 'hf_model_name' in cfg.get('text_cfg', {}) or 'multimodal_cfg' in cfg:
        raise ValueError(f'{model_name} has a custom text tower; NumCLIP needs a CLIP-style text transformer')
    if quick_gelu is None:
        quick_gelu = default_quick_gelu(model_name, pretrained, cache_dir)
    if quick_gelu:
        cfg['quick_gelu'] = True
    return open_clip.CLIP(**cfg)


def load_pretrained(model: torch.nn.Module, model_name: str, pretrained: Optional[str],
                    cache_dir: Optional[str] = None) -> Optional[str]:
    """Apply ``pretrained`` (file or tag, :func:`resolve_pretrained`) to ``model`` strictly; returns the file read
    (None when ``pretrained`` is None: the model keeps its weights)."""
    path = resolve_pretrained(model_name, pretrained, cache_dir)
    if path is not None:
        load_clip_weights(model, path, model_name)
    return path


def build_open_clip(model_name: str, pretrained: Optional[str] = None, cache_dir: Optional[str] = None,
                    quick_gelu: Optional[bool] = None) -> torch.nn.Module:
    """An open_clip ``CLIP`` with the requested weights, on CPU, in fp32: :func:`clip_architecture` then
    :func:`load_pretrained` (for tools and tests that want a loaded CLIP at once).

    ``quick_gelu``: None picks the activation the weights were trained with (:func:`default_quick_gelu`); True/False
    force it.
    """
    model = clip_architecture(model_name, pretrained, cache_dir, quick_gelu)
    load_pretrained(model, model_name, pretrained, cache_dir)
    return model


class CLIPSource:
    """An open_clip model built without weights, and where its pretrained weights come from.

    The towers built from :attr:`model` share its modules; the owner (:class:`NumCLIP`, or a tower built on its own)
    calls :meth:`load` from its ``init_weights``. Not an ``nn.Module``, so the model is never registered twice.
    """

    def __init__(self, model_name: str = 'ViT-B-16', pretrained: Optional[str] = None,
                 cache_dir: Optional[str] = None, quick_gelu: Optional[bool] = None):
        self.model_name, self.pretrained, self.cache_dir = model_name, pretrained, cache_dir
        self.model = clip_architecture(model_name, pretrained, cache_dir, quick_gelu)

    def load(self) -> Optional[str]:
        """Apply the pretrained weights to :attr:`model` (in place, wherever its parameters now live); returns the
        file read, None when there are no pretrained weights."""
        return load_pretrained(self.model, self.model_name, self.pretrained, self.cache_dir)
