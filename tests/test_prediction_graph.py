"""numclip_mm.prediction_graph and Predictor.trace/from_graph: the traced prediction equals the model's, runs under
autocast, refuses what it cannot reproduce, and loads in a process that imports torch alone; and the light test
pipeline (numclip_mm.light_pipeline) equals the one mmpretrain's registry builds."""
import copy
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import write_tiny_config

from numclip_mm.conformal import fit_calibration
from numclip_mm.inference import ImagePreprocessor, Predictor
from numclip_mm.light_pipeline import LightPipeline, PackImage, light_pipeline
from numclip_mm.prediction_graph import GRAPH_FORMAT, GraphTraceError, graph_metadata, load_graph, trace_module

COLUMNS = ('value', 'value_raw', 'label', 'label_index', 'probability', 'bin_argmax', 'bin_argmax_index',
           'bin_argmax_probability', 'embedding')


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('graph')
    cfg = write_tiny_config(root / 'tiny.py')
    torch.manual_seed(3)
    predictor = Predictor(cfg)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (20 + 5 * i, 41 - 3 * i, 3), dtype=np.uint8) for i in range(5)]
    return dict(root=root, cfg=cfg, predictor=predictor, archive=predictor.trace(),
                inputs=torch.stack([predictor.preprocessor(image) for image in images]), images=images)


def _assert_same(a, b, atol=1e-6):
    for key in COLUMNS:
        if a[key].dtype == object:
            assert list(a[key]) == list(b[key]), key
        else:
            np.testing.assert_allclose(b[key], a[key], atol=atol, rtol=0, err_msg=key)


def test_graph_predicts_what_the_model_predicts(tiny):
    """Batch sizes other than the trace's (2), a list of tensors and a stacked batch, images of any size."""
    eager, graph = tiny['predictor'], Predictor.from_graph(tiny['archive'])
    assert graph.model is None and graph.task == eager.task and graph.input_size == eager.input_size == (32, 32)
    for n in (1, 5):
        _assert_same(eager.predict_tensors(tiny['inputs'][:n], embeddings=True),
                     graph.predict_tensors(tiny['inputs'][:n], embeddings=True))
    _assert_same(eager.predict(tiny['images'], embeddings=True), graph.predict(tiny['images'], embeddings=True))
    assert graph.predict_tensors(list(tiny['inputs'][:3]))['value'].shape == (3,)
    assert graph.predict_tensors(tiny['inputs'][:0])['value'].shape == (0,)
    norms = np.linalg.norm(graph.features(tiny['images'][:2]), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_graph_gives_intervals_with_the_calibration_it_is_handed(tiny):
    rng = np.random.default_rng(2)
    truth = rng.uniform(0, 9, 200)
    probs = rng.dirichlet(np.ones(tiny['predictor'].task.num_bins), 200)
    calibration = fit_calibration(truth + rng.normal(0, 0.7, 200), probs, truth, 'count', [0.9])
    graph = Predictor.from_graph(tiny['archive'], calibration=calibration)
    eager = Predictor(tiny['cfg'], calibration=calibration)
    eager.model.load_state_dict(tiny['predictor'].model.state_dict())
    a, b = eager.predict_tensors(tiny['inputs'], (0.9,)), graph.predict_tensors(tiny['inputs'], (0.9,))
    np.testing.assert_allclose(b['low_0.9'], a['low_0.9'], atol=1e-6)
    np.testing.assert_allclose(b['high_0.9'], a['high_0.9'], atol=1e-6)
    with pytest.raises(ValueError, match='no conformal calibration'):
        Predictor.from_graph(tiny['archive']).predict_tensors(tiny['inputs'], (0.9,))


def test_graph_runs_under_autocast(tiny):
    """bf16 (CPU autocast): the graph's numbers move off fp32 (autocast reaches the traced ops) and stay within the
    precision's rounding of the model's own bf16 run. Casts the model code makes from its input's dtype are recorded
    at fp32 by the trace, so the two bf16 runs are close, not equal."""
    fp32 = Predictor.from_graph(tiny['archive']).predict_tensors(tiny['inputs'], embeddings=True)
    bf16 = Predictor.from_graph(tiny['archive'], precision='bf16').predict_tensors(tiny['inputs'], embeddings=True)
    eager = tiny['predictor']
    eager.precision = 'bf16'
    try:
        eager_bf16 = eager.predict_tensors(tiny['inputs'], embeddings=True)
    finally:
        eager.precision = 'fp32'
    assert not np.array_equal(bf16['embedding'], fp32['embedding'])
    np.testing.assert_allclose(bf16['embedding'], fp32['embedding'], atol=0.03)
    np.testing.assert_allclose(bf16['probability'], eager_bf16['probability'], atol=0.02)
    np.testing.assert_allclose(bf16['value'], eager_bf16['value'], atol=0.1)


def test_trace_refuses_device_constants_and_data_dependent_code(tiny, monkeypatch):
    predictor = Predictor(tiny['cfg'])
    head = predictor.model.head
    predict_arrays = head.predict_arrays

    def with_a_cpu_tensor(feats):
        probs, raw = predict_arrays(feats)
        return probs, raw + torch.zeros(raw.shape[0], device='cpu')

    monkeypatch.setattr(head, 'predict_arrays', with_a_cpu_tensor)
    with pytest.raises(GraphTraceError, match=r"device constants \['cpu'\]"):
        predictor.trace()

    def batch_dependent(feats):
        probs, raw = predict_arrays(feats)
        return probs, raw * float(raw.shape[0] == 2)  # a Python number: the trace keeps the traced batch's value

    monkeypatch.setattr(head, 'predict_arrays', batch_dependent)
    with pytest.raises(GraphTraceError, match="numbers differ from the model's on a batch of another size"):
        predictor.trace()
    monkeypatch.undo()
    # the data preprocessor's device move is left out of the trace only while tracing
    assert 'cast_data' not in vars(predictor.model.data_preprocessor)
    with pytest.raises(GraphTraceError, match='already a graph'):
        Predictor.from_graph(tiny['archive']).trace()
    with pytest.raises(GraphTraceError, match='trace the model on the CPU'):
        trace_module(copy.deepcopy(tiny['predictor'].model).to('meta'), (32, 32))


def test_load_graph_refuses_other_files(tiny, tmp_path):
    with pytest.raises(ValueError, match='not a prediction graph archive'):
        load_graph(b'PK\x03\x04 not really a zip')
    scripted = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)  # TorchScript, but not ours
    with pytest.raises(ValueError, match=f'not a prediction graph archive of this version \\({GRAPH_FORMAT}\\)'):
        load_graph(scripted.getvalue())
    graph, meta = load_graph(tiny['archive'])
    assert meta['format'] == GRAPH_FORMAT and meta['input_size'] == [32, 32] and meta['task']['name'] == 'count'
    assert meta['pipeline'] == [dict(type='Resize', scale=[32, 32]),
                                dict(type='PackInputs', algorithm_keys=['gt_value'])]
    assert graph_metadata(tiny['archive']) == meta  # read from the zip, without loading the graph
    for other in (b'not a zip', scripted.getvalue()):
        with pytest.raises(ValueError, match='not a prediction graph archive'):
            graph_metadata(other)


def test_graph_loads_with_torch_alone(tiny, tmp_path):
    """A fresh process makes a predictor of the archive and predicts what the model predicts, importing neither
    mmpretrain, mmengine's model stack, open_clip, torchvision nor numclip_mm's models (what makes a scorer
    actor's start-up short)."""
    archive = tmp_path / 'graph.pt'
    archive.write_bytes(tiny['archive'])
    inputs = tmp_path / 'inputs.npy'
    np.save(inputs, tiny['inputs'].numpy())
    code = f"""
import json, sys
import numpy as np, torch
from numclip_mm.inference import Predictor
p = Predictor.from_graph(open({str(archive)!r}, 'rb').read())
out = p.predict_tensors(torch.from_numpy(np.load({str(inputs)!r})))
heavy = sorted({{m.split('.')[0] if not m.startswith(('mmengine', 'numclip_mm')) else '.'.join(m.split('.')[:2])
                 for m in sys.modules}} & {{'mmpretrain', 'open_clip', 'torchvision', 'mmengine.model',
                                            'mmengine.runner', 'numclip_mm.models', 'mmengine.dataset'}})
print(json.dumps(dict(value=out['value'].tolist(), heavy=heavy)))
"""
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result['heavy'] == []
    np.testing.assert_allclose(result['value'], tiny['predictor'].predict_tensors(tiny['inputs'])['value'],
                               atol=1e-6)


# -- the light test pipeline ----------------------------------------------------------------------------------

PIPELINES = [
    [dict(type='PackInputs', algorithm_keys=['gt_value'])],
    [dict(type='Resize', scale=(256, 256)), dict(type='CenterCrop', crop_size=224),
     dict(type='PackInputs', algorithm_keys=['gt_value'])],
    [dict(type='Resize', scale=200, keep_ratio=True, interpolation='bicubic'), dict(type='CenterCrop', crop_size=150),
     dict(type='PackInputs')],
    [dict(type='Resize', scale=(40, 30), interpolation='area'), dict(type='CenterCrop', crop_size=(64, 16)),
     dict(type='PackInputs')],
]


@pytest.mark.parametrize('steps', PIPELINES, ids=['pack', 'paper', 'keep-ratio-bicubic', 'crop-larger'])
def test_light_pipeline_equals_the_registry_pipeline(tiny, steps):
    """Same pixels as mmpretrain's Compose of the same steps, on images of odd sizes, gray and colour."""
    from mmengine.dataset import Compose
    from mmpretrain.registry import TRANSFORMS
    light, registry = light_pipeline(steps), Compose(steps)
    assert isinstance(light, LightPipeline)
    rng = np.random.default_rng(1)
    for h, w, c in ((37, 301, 3), (256, 256, 3), (480, 95, 3), (9, 9, 3), (50, 70, 0)):
        image = rng.integers(0, 256, (h, w, c) if c else (h, w), dtype=np.uint8)
        results = dict(img=image, img_shape=image.shape[:2], ori_shape=image.shape[:2])
        a, b = light(dict(results))['inputs'], registry(dict(results))['inputs']
        assert a.dtype == b.dtype == torch.uint8 and a.is_contiguous()
        assert torch.equal(a, b), (h, w, c)
    import mmcv.transforms
    assert TRANSFORMS.get('Resize') is mmcv.transforms.Resize  # the registry's steps are the classes used here
    assert TRANSFORMS.get('CenterCrop') is mmcv.transforms.CenterCrop


def test_light_pipeline_leaves_other_steps_to_the_registry(tiny):
    assert light_pipeline([dict(type='ResizeEdge', scale=224), dict(type='PackInputs')]) is None
    assert light_pipeline([dict(type='Resize', no_such_argument=1), dict(type='PackInputs')]) is None
    steps = [dict(type='ResizeEdge', scale=32, edge='short'), dict(type='CenterCrop', crop_size=32),
             dict(type='PackInputs')]
    preprocessor = ImagePreprocessor.from_steps(steps, (32, 32))  # built through the registry instead
    assert not isinstance(preprocessor._pipeline, LightPipeline)
    assert tuple(preprocessor(tiny['images'][0]).shape) == (3, 32, 32)
    assert isinstance(ImagePreprocessor(tiny['cfg'])._pipeline, LightPipeline)  # Resize + PackInputs: light
    assert isinstance(PackImage()(dict(img=np.zeros((2, 3), np.uint8)))['inputs'], torch.Tensor)


def test_graph_of_a_config_with_a_custom_step_imports_its_module(tiny, tmp_path, monkeypatch):
    """A test step from the config's own ``custom_imports``: a process that only has the graph imports that module
    (the registry builds the step) and preprocesses as the model's own predictor does."""
    (tmp_path / 'numclip_test_steps.py').write_text(
        'from mmcv.transforms import BaseTransform\n'
        'from mmpretrain.registry import TRANSFORMS\n\n\n'
        '@TRANSFORMS.register_module()\n'
        'class NumclipTestInvert(BaseTransform):\n'
        '    def transform(self, results):\n'
        "        results['img'] = 255 - results['img']\n"
        '        return results\n')
    cfg = tmp_path / 'custom.py'
    cfg.write_text(f"_base_ = [{tiny['cfg']!r}]\n"
                   "custom_imports = dict(imports=['numclip_mm.register', 'numclip_test_steps'])\n"
                   "test_dataloader = dict(dataset=dict(pipeline=[dict(type='Resize', scale=(32, 32)),\n"
                   "    dict(type='NumclipTestInvert'), dict(type='PackInputs')]))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    predictor = Predictor(str(cfg))
    predictor.model.load_state_dict(tiny['predictor'].model.state_dict())
    archive = tmp_path / 'graph.pt'
    archive.write_bytes(predictor.trace())
    image = tmp_path / 'image.npy'
    np.save(image, tiny['images'][1])
    code = (f"import json, numpy as np\nfrom numclip_mm.inference import Predictor\n"
            f"p = Predictor.from_graph(open({str(archive)!r}, 'rb').read())\n"
            f"print(json.dumps(p.predict(np.load({str(image)!r}))['value'].tolist()))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = predictor.predict(tiny['images'][1])['value']
    assert not np.allclose(expected, tiny['predictor'].predict(tiny['images'][1])['value'])  # the step ran
    np.testing.assert_allclose(json.loads(proc.stdout.strip().splitlines()[-1]), expected, atol=1e-6)
