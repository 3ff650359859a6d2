"""Offline CLIP loading: random init, every published file format, strict key/shape/architecture checks, the local
tag caches (the layout the "CLIP weights" section of docs/reproducing_the_paper.md documents)."""
import os
from pathlib import Path

import open_clip
import pytest
import torch
from helpers import Payload
from open_clip.transformer import QuickGELU

from numclip_mm.models.clip_loader import (
    TINY_MODELS,
    CheckpointMismatchError,
    build_open_clip,
    checkpoint_format,
    load_clip_weights,
    read_clip_state_dict,
    resolve_pretrained,
)
from numclip_mm.utils import CheckpointLoadError

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def tiny_state(tmp_path_factory):
    """A tiny model with distinctive weights, saved once as .pt."""
    torch.manual_seed(123)
    model = build_open_clip('numclip-tiny')
    with torch.no_grad():
        model.logit_scale.fill_(4.2)
    path = tmp_path_factory.mktemp('ckpt') / 'tiny.pt'
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(state, path)
    return state, path


def assert_same_weights(model, state):
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


def test_tiny_configs_registered():
    assert set(TINY_MODELS) >= {'numclip-tiny', 'numclip-demo'}
    assert {'numclip-tiny', 'numclip-demo'} <= set(open_clip.list_models())


def test_build_random_init():
    model = build_open_clip('numclip-tiny', pretrained=None)
    assert tuple(model.visual.image_size) == (32, 32)
    assert model.text_projection.shape == (32, 32)
    assert model.context_length == 24
    assert next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        feats = model.encode_image(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 32)
    demo = build_open_clip('numclip-demo')
    assert demo.text_projection.shape[1] == 64


def test_unknown_model_name():
    with pytest.raises(ValueError, match='unknown open_clip model'):
        build_open_clip('numclip-nonexistent')


def test_round_trip_pt(tiny_state):
    state, path = tiny_state
    torch.manual_seed(999)  # a different random init, so equality below proves loading
    fresh = build_open_clip('numclip-tiny')
    assert not torch.equal(fresh.state_dict()['visual.conv1.weight'], state['visual.conv1.weight'])
    loaded = build_open_clip('numclip-tiny', pretrained=str(path))
    assert_same_weights(loaded, state)
    assert loaded.logit_scale.item() == pytest.approx(4.2)


def test_round_trip_safetensors(tiny_state, tmp_path):
    safetensors_torch = pytest.importorskip('safetensors.torch')
    state, _ = tiny_state
    path = tmp_path / 'tiny.safetensors'
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = build_open_clip('numclip-tiny', pretrained=str(path))
    assert_same_weights(loaded, state)


def test_load_clip_weights_directly(tiny_state):
    state, path = tiny_state
    model = build_open_clip('numclip-tiny')
    load_clip_weights(model, str(path))
    assert_same_weights(model, state)


def test_scalar_logit_scale_is_reshaped(tiny_state, tmp_path):
    """OpenAI-style checkpoints store logit_scale as a 0-d tensor; it is reshaped to the model's shape."""
    state, _ = tiny_state
    state = dict(state)
    state['logit_scale'] = state['logit_scale'].reshape(())
    path = tmp_path / 'scalar_scale.pt'
    torch.save(state, path)
    loaded = build_open_clip('numclip-tiny', pretrained=str(path))
    assert loaded.logit_scale.item() == pytest.approx(4.2)


def test_missing_file(tmp_path):
    missing = str(tmp_path / 'nope' / 'clip.pt')
    with pytest.raises(FileNotFoundError, match='nope'):
        build_open_clip('numclip-tiny', pretrained=missing)
    with pytest.raises(FileNotFoundError) as err:
        resolve_pretrained('numclip-tiny', 'weights.safetensors')
    assert 'weights.safetensors' in str(err.value)


def _save_modified(state, path, change):
    state = dict(state)
    change(state)
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize('kind', ['missing', 'extra', 'shape'])
def test_mismatch_names_file_and_key(tiny_state, tmp_path, kind):
    state, _ = tiny_state
    key = 'visual.ln_post.weight'
    if kind == 'missing':
        path = _save_modified(state, tmp_path / 'missing.pt', lambda s: s.pop(key))
    elif kind == 'extra':
        key = 'visual.unexpected_extra_weight'
        path = _save_modified(state, tmp_path / 'extra.pt', lambda s: s.__setitem__(key, torch.zeros(3)))
    else:
        path = _save_modified(state, tmp_path / 'shape.pt', lambda s: s.__setitem__(key, torch.zeros(33)))
    with pytest.raises(CheckpointMismatchError) as err:
        build_open_clip('numclip-tiny', pretrained=path)
    msg = str(err.value)
    assert path in msg
    assert key in msg
    if kind == 'shape':
        assert '(33,)' in msg and '(32,)' in msg


def test_checkpoint_of_other_model_is_a_mismatch(tiny_state):
    _, path = tiny_state
    with pytest.raises(CheckpointMismatchError, match=str(path)):
        build_open_clip('numclip-demo', pretrained=str(path))


def test_unreadable_checkpoint(tmp_path):
    path = tmp_path / 'garbage.pt'
    path.write_bytes(b'this is not a checkpoint')
    with pytest.raises(CheckpointLoadError, match='garbage.pt'):
        build_open_clip('numclip-tiny', pretrained=str(path))


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ValueError) as err:
        resolve_pretrained('ViT-B-16', 'no_such_tag')
    msg = str(err.value)
    assert 'no_such_tag' in msg
    assert 'openai' in msg and 'laion2b_s34b_b88k' in msg


def test_none_and_empty_pretrained():
    assert resolve_pretrained('ViT-B-16', None) is None
    assert resolve_pretrained('ViT-B-16', '') is None


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """An empty CLIP cache and an empty, offline Hugging Face cache."""
    cache = tmp_path / 'clip_cache'
    cache.mkdir()
    monkeypatch.setenv('NUMCLIP_CLIP_CACHE', str(cache))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    hf = tmp_path / 'hf'
    hf.mkdir()
    monkeypatch.setenv('HF_HOME', str(hf))
    monkeypatch.setenv('HF_HUB_CACHE', str(hf / 'hub'))
    try:  # huggingface_hub reads its cache dir at import time
        from huggingface_hub import constants
        monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(hf / 'hub'))
        monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    except ImportError:
        pass
    return cache


def test_known_tag_not_cached(empty_caches):
    with pytest.raises(FileNotFoundError) as err:
        resolve_pretrained('ViT-B-16', 'openai')
    msg = str(err.value)
    assert 'never downloads' in msg
    assert str(empty_caches) in msg  # the searched location is named
    # explicit cache_dir wins over the environment variable
    other = empty_caches.parent / 'other'
    other.mkdir()
    with pytest.raises(FileNotFoundError, match='other'):
        resolve_pretrained('ViT-B-16', 'openai', cache_dir=str(other))


def test_known_tag_found_in_cache(empty_caches):
    url = open_clip.get_pretrained_cfg('ViT-B-16', 'openai')['url']
    placed = empty_caches / os.path.basename(url)
    placed.write_bytes(b'placeholder')  # only the resolved path is checked; nothing is built from it
    assert resolve_pretrained('ViT-B-16', 'openai') == str(placed)
    other = empty_caches.parent / 'explicit'
    other.mkdir()
    placed2 = other / os.path.basename(url)
    placed2.write_bytes(b'placeholder')
    assert resolve_pretrained('ViT-B-16', 'openai', cache_dir=str(other)) == str(placed2)


def test_existing_file_is_returned_as_is(tiny_state):
    _, path = tiny_state
    assert resolve_pretrained('numclip-tiny', str(path)) == str(path)


# ---------------------------------------------------------------- the published file formats
def save_openai_archive(model: torch.nn.Module, path, image_size: int) -> None:
    """OpenAI's release format: a TorchScript archive (traced forward) holding fp16 weights."""
    model = model.eval()
    image = torch.zeros(1, 3, image_size, image_size)
    text = torch.zeros(1, model.context_length, dtype=torch.long)
    with torch.no_grad():
        traced = torch.jit.trace(model, (image, text), check_trace=False)
    traced.half().save(str(path))


@pytest.fixture(scope='module')
def tiny_files(tiny_state, tmp_path_factory):
    """The tiny weights in each format, under misleading extensions: the format is told by content."""
    state, _ = tiny_state
    folder = tmp_path_factory.mktemp('formats')
    torch.manual_seed(0)
    source = build_open_clip('numclip-tiny', quick_gelu=True)
    source.load_state_dict(state)
    save_openai_archive(source, folder / 'openai_archive.bin', image_size=32)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / 'open_clip_model.pt'))
    torch.save(state, folder / 'open_clip_pytorch_model.safetensors')
    torch.save({'epoch': 3, 'state_dict': {f'module.{k}': v for k, v in state.items()}}, folder / 'training.pt')
    torch.save({k: v.half() for k, v in state.items()}, folder / 'fp16_state.pt')
    return folder


def test_format_told_by_content(tiny_files):
    assert checkpoint_format(str(tiny_files / 'openai_archive.bin')) == 'torchscript'
    assert checkpoint_format(str(tiny_files / 'open_clip_model.pt')) == 'safetensors'
    assert checkpoint_format(str(tiny_files / 'open_clip_pytorch_model.safetensors')) == 'pickle'


@pytest.mark.parametrize('name,fp16', [('openai_archive.bin', True), ('open_clip_model.pt', False),
                                       ('open_clip_pytorch_model.safetensors', False), ('training.pt', False),
                                       ('fp16_state.pt', True)])
def test_each_format_round_trips(tiny_state, tiny_files, name, fp16):
    """Loaded weights equal the source (rounded to fp16 where the file stores fp16), always as fp32 parameters."""
    state, _ = tiny_state
    torch.manual_seed(5)
    loaded = build_open_clip('numclip-tiny', pretrained=str(tiny_files / name))
    got = loaded.state_dict()
    assert set(got) == set(state)
    for key, value in state.items():
        expected = value.half().float() if fp16 and value.is_floating_point() else value
        assert got[key].dtype == value.dtype, key
        assert torch.equal(got[key], expected), key
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_openai_archive_reads_weights_only_fp32(tiny_state, tiny_files):
    state, _ = tiny_state
    read = read_clip_state_dict(str(tiny_files / 'openai_archive.bin'))
    assert set(read) == set(state)  # the archive's attn_mask buffer is not a weight
    assert read['visual.conv1.weight'].dtype == torch.float32
    with pytest.raises(RuntimeError, match='TorchScript'):  # why a dedicated reader is needed
        torch.load(tiny_files / 'openai_archive.bin', weights_only=True)


def uses_quick_gelu(model) -> bool:
    return isinstance(model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_quick_gelu_follows_the_source(tiny_files):
    """OpenAI's archives were trained with QuickGELU; a plain state dict keeps the config's GELU unless told."""
    assert uses_quick_gelu(build_open_clip('numclip-tiny', pretrained=str(tiny_files / 'openai_archive.bin')))
    assert not uses_quick_gelu(build_open_clip('numclip-tiny', pretrained=str(tiny_files / 'training.pt')))
    assert uses_quick_gelu(build_open_clip('numclip-tiny', pretrained=str(tiny_files / 'training.pt'),
                                           quick_gelu=True))
    assert not uses_quick_gelu(build_open_clip('numclip-tiny', pretrained=str(tiny_files / 'openai_archive.bin'),
                                               quick_gelu=False))


def test_file_of_another_architecture_names_both(tmp_path):
    torch.manual_seed(1)
    demo = build_open_clip('numclip-demo')
    path = tmp_path / 'demo_weights.pt'
    torch.save(demo.state_dict(), path)
    with pytest.raises(CheckpointMismatchError) as err:
        build_open_clip('numclip-tiny', pretrained=str(path))
    msg = str(err.value)
    assert str(path) in msg and 'numclip-tiny' in msg and 'numclip-demo' in msg
    assert 'width 96' in msg and 'width 32' in msg


def test_pickle_payload_in_clip_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    marker = tmp_path / 'executed'
    path = tmp_path / 'evil.pt'
    torch.save({'visual.conv1.weight': Payload(str(marker))}, path)
    with pytest.raises(CheckpointLoadError, match='evil.pt'):
        build_open_clip('numclip-tiny', pretrained=str(path))
    assert not marker.exists()



# ---------------------------------------------------------------- the caches docs/reproducing_the_paper.md documents
def test_hf_cache_layout_is_found_offline(empty_caches):
    """HF_HUB_CACHE/models--timm--vit_base_patch16_clip_224.openai/snapshots/<rev>/ + refs/main, HF_HUB_OFFLINE=1."""
    hub = Path(os.environ['HF_HUB_CACHE'])
    repo = hub / 'models--timm--vit_base_patch16_clip_224.openai'
    revision = '0123456789abcdef0123456789abcdef01234567'
    snapshot = repo / 'snapshots' / revision
    snapshot.mkdir(parents=True)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(revision)
    (snapshot / 'open_clip_pytorch_model.bin').write_bytes(b'placeholder')
    assert resolve_pretrained('ViT-B-16', 'openai') == str(snapshot / 'open_clip_pytorch_model.bin')
    (snapshot / 'open_clip_model.safetensors').write_bytes(b'placeholder')  # preferred, as open_clip does
    assert resolve_pretrained('ViT-B-16', 'openai') == str(snapshot / 'open_clip_model.safetensors')
    # OpenAI's own file in the CLIP cache comes first
    (empty_caches / 'ViT-B-16.pt').write_bytes(b'placeholder')
    assert resolve_pretrained('ViT-B-16', 'openai') == str(empty_caches / 'ViT-B-16.pt')


def test_hf_cache_via_hf_home(tmp_path, monkeypatch):
    monkeypatch.delenv('HF_HUB_CACHE', raising=False)
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('NUMCLIP_CLIP_CACHE', str(tmp_path / 'none'))
    snapshot = tmp_path / 'home/hub/models--laion--CLIP-ViT-B-16-laion2B-s34B-b88K/snapshots/abc'
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / 'refs').mkdir()
    (snapshot.parents[1] / 'refs' / 'main').write_text('abc')
    (snapshot / 'open_clip_pytorch_model.bin').write_bytes(b'placeholder')
    assert resolve_pretrained('ViT-B-16', 'laion2b_s34b_b88k') == str(snapshot / 'open_clip_pytorch_model.bin')


def test_docs_document_the_searched_places():
    text = (ROOT / 'docs' / 'reproducing_the_paper.md').read_text()
    for place in ('~/.cache/clip/ViT-B-16.pt', '$NUMCLIP_CLIP_CACHE', '$HF_HUB_CACHE', '$HF_HOME/hub',
                  'models--timm--vit_base_patch16_clip_224.openai/snapshots/', 'refs/main',
                  'open_clip_model.safetensors', 'open_clip_pytorch_model.bin'):
        assert place in text, place
