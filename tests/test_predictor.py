"""numclip_mm.inference.Predictor: checkpoint round trip, bytes vs arrays, clear load errors."""
import io
import pickle

import numpy as np
import pytest
import torch
from helpers import write_tiny_config
from PIL import Image

from numclip_mm.inference import ImagePreprocessor, Predictor, decode_image, default_precision, describe_model
from numclip_mm.utils import CheckpointMismatchError

COLUMNS = {'value', 'value_raw', 'label', 'label_index', 'probability', 'bin_argmax', 'bin_argmax_index',
           'bin_argmax_probability'}


def png_bytes(array, **save):
    buf = io.BytesIO()
    (array if isinstance(array, Image.Image) else Image.fromarray(array)).save(buf, format='PNG', **save)
    return buf.getvalue()


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('predictor')
    cfg = write_tiny_config(root / 'tiny.py')
    torch.manual_seed(0)
    predictor = Predictor(cfg)  # random init
    with torch.no_grad():  # make the weights differ from a fresh build, so a round trip cannot pass by accident
        for p in predictor.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ckpt = root / 'tiny.pth'
    torch.save({'state_dict': predictor.model.state_dict(), 'meta': {'epoch': 1}}, ckpt)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24 + 3 * i, 40 - 2 * i, 3), dtype=np.uint8) for i in range(5)]
    return dict(root=root, cfg=cfg, ckpt=str(ckpt), predictor=predictor, images=images)


def test_round_trip_from_checkpoint(tiny):
    loaded = Predictor(tiny['cfg'], tiny['ckpt'])
    a, b = tiny['predictor'].predict(tiny['images']), loaded.predict(tiny['images'])
    assert set(b) == COLUMNS
    np.testing.assert_allclose(b['value'], a['value'], rtol=0, atol=1e-6)
    np.testing.assert_allclose(b['probability'], a['probability'], rtol=0, atol=1e-6)
    assert list(b['label']) == list(a['label'])
    assert b['value'].shape == (5,) and b['label'].dtype == object
    assert set(b['label']) <= set(loaded.task.concepts) and loaded.task.name == 'count'
    probs_ok = (b['probability'] > 0) & (b['probability'] <= 1)
    assert probs_ok.all()
    np.testing.assert_array_equal(b['value'], np.clip(b['value_raw'], 0, 9))  # task 'count' covers [0, 9]


def test_bytes_and_arrays_agree_and_tensor_path(tiny):
    p = tiny['predictor']
    from_arrays = p.predict(tiny['images'])
    from_bytes = p.predict([png_bytes(a) for a in tiny['images']])
    np.testing.assert_allclose(from_bytes['value'], from_arrays['value'], atol=1e-6)
    assert list(from_bytes['label']) == list(from_arrays['label'])
    # the two halves used by batch/: a pickled preprocessor + predict_tensors on a stacked batch
    pre = pickle.loads(pickle.dumps(p.preprocessor))
    assert isinstance(pre, ImagePreprocessor)
    stacked = torch.stack([pre(decode_image(png_bytes(a))) for a in tiny['images']])
    assert stacked.dtype == torch.uint8 and stacked.shape == (5, 3, 32, 32)
    np.testing.assert_allclose(p.predict_tensors(stacked)['value'], from_arrays['value'], atol=1e-6)


def test_decode_image_errors():
    with pytest.raises(ValueError, match='empty'):
        decode_image(b'')
    with pytest.raises(ValueError, match='cannot decode'):
        decode_image(b'definitely not an image')
    big = png_bytes(np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(ValueError, match='exceeds the pixel limit max_pixels=1000'):
        decode_image(big, max_pixels=1000)
    assert decode_image(big, max_pixels=None).shape == (30, 40, 3)


def test_decode_image_is_rgb_and_from_bytes_matches(tiny):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200  # pure red
    out = decode_image(png_bytes(rgb))
    assert out.dtype == np.uint8 and out[0, 0].tolist() == [200, 0, 0]
    pre = tiny['predictor'].preprocessor
    torch.testing.assert_close(pre.from_bytes(png_bytes(rgb)), pre(rgb))


def test_missing_checkpoint(tiny):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        Predictor(tiny['cfg'], str(tiny['root'] / 'nope.pth'))


@pytest.mark.parametrize('change', [dict(task='adience'), dict(model_name='numclip-demo')],
                         ids=['more-bins', 'other-clip-model'])
def test_mismatched_checkpoint_names_keys(tiny, tmp_path, change):
    other = write_tiny_config(tmp_path / 'other.py', **change)
    with pytest.raises(CheckpointMismatchError) as info:
        Predictor(other, tiny['ckpt'])
    msg = str(info.value)
    assert tiny['ckpt'] in msg
    # the message names at least one offending parameter (dotted state-dict key)
    assert 'shape mismatches' in msg and any(part in msg for part in ('.weight', '.bias', 'prompt', 'anchors',
                                                                       'token', 'embedding'))


def test_describe_model_checks_exactly_without_initialising(tiny, tmp_path):
    """The scorer's up-front check: same verdicts as loading into a Predictor, task and input size reported."""
    info = describe_model(tiny['cfg'], tiny['ckpt'])
    assert info['task'].name == 'count' and info['input_size'] == (32, 32)
    with pytest.raises(CheckpointMismatchError, match='shape mismatches'):
        describe_model(write_tiny_config(tmp_path / 'other.py', task='adience'), tiny['ckpt'])
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        describe_model(tiny['cfg'], str(tmp_path / 'nope.pth'))
    assert torch.nn.init.normal_ is not None and torch.nn.init.normal_(torch.zeros(50)).abs().sum() > 0  # restored


def test_values_clamped_to_the_task_range_raw_kept(tiny, monkeypatch):
    p = tiny['predictor']
    head = p.model.head
    raw = torch.tensor([-1.5, 0.0, 4.2, 9.0, 9.06])
    probs = torch.full((5, 5), 0.2)
    monkeypatch.setattr(head, 'predict_arrays', lambda feats: (probs, raw))
    out = p.predict_tensors(torch.zeros(5, 3, 32, 32, dtype=torch.uint8))
    np.testing.assert_allclose(out['value'], [0.0, 0.0, 4.2, 9.0, 9.0], atol=1e-6)  # count: [0, 9]
    np.testing.assert_allclose(out['value_raw'], raw.numpy(), atol=1e-6)


def test_every_image_reaches_the_model_input_size(tiny, tmp_path):
    """A config whose test pipeline has no resize still gives the model its input size, for any image size."""
    cfg = tmp_path / 'noresize.py'
    cfg.write_text(f"_base_ = [{tiny['cfg']!r}]\n"
                   "test_dataloader = dict(dataset=dict(\n"
                   "    pipeline=[dict(type='PackInputs', algorithm_keys=['gt_value'])]))\n")
    p = Predictor(str(cfg), tiny['ckpt'])
    sizes = [(32, 32), (224, 224), (1, 1), (17, 300)]
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    tensors = [p.preprocessor(i) for i in images]
    assert all(t.shape == (3, 32, 32) and t.dtype == torch.uint8 for t in tensors)
    assert torch.equal(tensors[0], torch.from_numpy(np.ascontiguousarray(images[0][..., ::-1].transpose(2, 0, 1))))
    out = p.predict(images)  # one batch of mixed sizes: no "size of tensor a must match" failure
    assert out['value'].shape == (4,)
    np.testing.assert_allclose(out['value'][:1], p.predict(images[:1])['value'], atol=1e-6)


def test_bf16_on_cpu_close_to_fp32(tiny):
    """bf16 autocast (what a GPU actor would use) against fp32: values within 0.05 of the 0..9 range's units and
    bin probabilities within 0.02, on the same images."""
    assert default_precision('cpu') == 'fp32' and default_precision('cuda') in ('bf16', 'fp16')
    fp32 = Predictor(tiny['cfg'], tiny['ckpt'], precision='fp32')
    bf16 = Predictor(tiny['cfg'], tiny['ckpt'], precision='bf16')
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(16)]
    a, b = fp32.predict(images), bf16.predict(images)
    assert not np.array_equal(a['value_raw'], b['value_raw'])  # bf16 really ran
    np.testing.assert_allclose(b['value_raw'], a['value_raw'], rtol=0, atol=0.05)
    np.testing.assert_allclose(b['bin_argmax_probability'], a['bin_argmax_probability'], rtol=0, atol=0.02)
    with pytest.raises(ValueError, match='precision'):
        Predictor(tiny['cfg'], tiny['ckpt'], precision='int8')


# -- what predict accepts: every form gives the prediction of its encoded bytes ----------------------------------

def _same_prediction(predictor, image, reference_bytes, **kw):
    got, want = predictor.predict(image, **kw), predictor.predict([reference_bytes])
    assert {k: len(v) for k, v in got.items()} == {k: 1 for k in COLUMNS}
    np.testing.assert_allclose(got['value'], want['value'], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got['probability'], want['probability'], rtol=0, atol=1e-6)
    assert list(got['label']) == list(want['label'])


@pytest.fixture(scope='module')
def rgb(tiny):
    return tiny['images'][1]


def test_predict_single_bytes_and_bytearray(tiny, rgb):
    data = png_bytes(rgb)
    _same_prediction(tiny['predictor'], data, data)
    _same_prediction(tiny['predictor'], bytearray(data), data)


def test_predict_paths_str_pathlib_and_uri(tiny, rgb, tmp_path):
    import fsspec
    data = png_bytes(rgb)
    path = tmp_path / 'image.png'
    path.write_bytes(data)
    for image in (str(path), path, f'file://{path}'):
        _same_prediction(tiny['predictor'], image, data)
    with fsspec.open('memory://predictor/image.png', 'wb') as f:  # a non-local fsspec filesystem
        f.write(data)
    _same_prediction(tiny['predictor'], 'memory://predictor/image.png', data)
    with pytest.raises(OSError, match='image file not found: .*missing.png'):
        tiny['predictor'].predict(tmp_path / 'missing.png')


@pytest.mark.parametrize('mode', ['RGB', 'L', 'RGBA', 'P', 'LA', 'I;16'])
def test_predict_pil_images_of_any_mode(tiny, rgb, mode):
    if mode == 'I;16':
        image = Image.fromarray((rgb[..., 0].astype(np.uint16) * 257 + 3))
    else:
        image = Image.fromarray(rgb).convert(mode)
    assert image.mode == mode
    data = png_bytes(image)
    _same_prediction(tiny['predictor'], image, data)
    _same_prediction(tiny['predictor'], Image.open(io.BytesIO(data)), data)  # a lazily loaded file image


def test_predict_pil_applies_exif_orientation_as_training_does(tiny):
    rng = np.random.default_rng(3)
    wide = rng.integers(0, 256, (20, 36, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    for fmt in ('PNG', 'JPEG'):
        buf = io.BytesIO()
        Image.fromarray(wide).save(buf, format=fmt, exif=exif.tobytes())
        data = buf.getvalue()
        assert decode_image(data).shape == (36, 20, 3)  # the training decoder turns it upright
        _same_prediction(tiny['predictor'], Image.open(io.BytesIO(data)), data)
    pre = tiny['predictor'].preprocessor
    unrotated = pre(np.asarray(Image.open(io.BytesIO(data)).convert('RGB')))
    assert not torch.equal(unrotated, pre.from_bytes(data))  # the orientation matters to the model's input


@pytest.mark.parametrize('layout', ['HW', 'HW1', 'HW3', 'HW4'])
def test_predict_uint8_arrays_gray_rgb_rgba(tiny, rgb, layout):
    rng = np.random.default_rng(4)
    gray = rgb[..., 1]
    array, image = {'HW': (gray, Image.fromarray(gray)), 'HW1': (gray[..., None], Image.fromarray(gray)),
                    'HW3': (rgb, Image.fromarray(rgb)),
                    'HW4': (np.dstack([rgb, rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)]), None)}[layout]
    image = image or Image.fromarray(array, 'RGBA')
    _same_prediction(tiny['predictor'], array, png_bytes(image))


def test_predict_float_arrays_need_their_scale(tiny, rgb):
    data = png_bytes(rgb)
    _same_prediction(tiny['predictor'], rgb.astype(np.float32) / 255, data, float_scale=1.0)
    _same_prediction(tiny['predictor'], rgb.astype(np.float64), data, float_scale=255)
    _same_prediction(tiny['predictor'], rgb.astype(np.uint16) * 257, data, float_scale=65535)
    with pytest.raises(TypeError, match=r'float32 image array needs its scale: pass float_scale=.*'
                                        r'predict\(x, float_scale=1.0\)'):
        tiny['predictor'].predict(rgb.astype(np.float32) / 255)
    with pytest.raises(ValueError, match=r'in \[0, float_scale=1\]; this array spans \[0, 25'):
        tiny['predictor'].predict(rgb.astype(np.float32), float_scale=1.0)  # pixels in [0, 255], scale 1: refused


def test_predict_refuses_what_is_not_an_image(tiny, rgb):
    p = tiny['predictor']
    for bad, name in ((42, 'builtins.int'), ({'image': 1}, 'builtins.dict'), (None, 'builtins.NoneType'),
                      (torch.zeros(3, 8, 8, dtype=torch.uint8), 'torch.Tensor')):
        with pytest.raises(TypeError, match=f'cannot predict from a {name}'):
            p.predict([bad])
    with pytest.raises(TypeError, match='predict_tensors'):
        p.predict(torch.zeros(8, 8, 3))
    with pytest.raises(ValueError, match=r'got shape \(2, 8, 8, 3\) \(a batch\? pass a list'):
        p.predict(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r'got shape \(8, 8, 2\)'):
        p.predict(np.zeros((8, 8, 2), np.uint8))


def test_predict_empty_list_gives_empty_columns(tiny):
    out = tiny['predictor'].predict([])
    assert set(out) == COLUMNS and all(len(v) == 0 for v in out.values())
    assert out['label'].dtype == object and out['label_index'].dtype == np.int64
    assert len(tiny['predictor'].predict(tiny['images'][:2])['value']) == 2


# -- label and value agree ----------------------------------------------------------------------------------------

def test_label_is_the_bin_of_the_value_argmax_kept_apart(tiny, monkeypatch):
    """Task 'count' (edges 0 2 4 6 8, upper 9): the label is the bin of the clamped value, whatever the most probable
    bin is; the arg-max bin and its probability have their own columns."""
    p = tiny['predictor']
    raw = torch.tensor([8.3, 1.9, -3.0, 12.0])
    probs = torch.tensor([[0.05, 0.05, 0.1, 0.6, 0.2],    # arg-max 'many', value 8.3 -> 'lots'
                          [0.1, 0.2, 0.5, 0.1, 0.1],      # arg-max 'several', value 1.9 -> 'none'
                          [0.7, 0.1, 0.1, 0.05, 0.05],    # clamped to 0 -> 'none' = arg-max
                          [0.2, 0.2, 0.2, 0.3, 0.1]])     # clamped to 9 -> 'lots'
    monkeypatch.setattr(p.model.head, 'predict_arrays', lambda feats: (probs, raw))
    out = p.predict_tensors(torch.zeros(4, 3, 32, 32, dtype=torch.uint8))
    np.testing.assert_allclose(out['value'], [8.3, 1.9, 0.0, 9.0], atol=1e-6)
    assert list(out['label']) == ['lots', 'none', 'none', 'lots'] and list(out['label_index']) == [4, 0, 0, 4]
    np.testing.assert_allclose(out['probability'], [0.2, 0.1, 0.7, 0.1], atol=1e-6)
    assert list(out['bin_argmax']) == ['many', 'several', 'none', 'many']
    assert list(out['bin_argmax_index']) == [3, 2, 0, 3]
    np.testing.assert_allclose(out['bin_argmax_probability'], [0.6, 0.5, 0.7, 0.3], atol=1e-6)
