"""Offline CLIP loading: random init, checkpoint round trips, strict key/shape checks, the local tag cache."""
import os

import open_clip
import pytest
import torch

from numclip_mm.models.clip_loader import (TINY_MODELS, CheckpointMismatchError, build_open_clip, load_clip_weights,
                                           resolve_pretrained)


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
    with pytest.raises(CheckpointMismatchError, match='garbage.pt'):
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
