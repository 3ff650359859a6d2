"""The pretrained tiny CLIP: its generated pairs, the pretraining tool, the packaged weights' tag and their zero-shot
skill on the demo (docs/pretrained_tiny_clip.md)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from numclip_mm.datasets.demo import SPLIT_STREAMS
from numclip_mm.models.clip_loader import PACKAGED_WEIGHTS, build_open_clip, read_clip_state_dict, resolve_pretrained
from numclip_mm.pretraining.synthetic_pairs import (
    CONCEPTS,
    PAIRS_STREAM,
    SHAPES,
    caption,
    captions,
    check_not_task_prompt,
    generate_pairs,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures('one_torch_thread')


def load_tool():
    spec = importlib.util.spec_from_file_location('pretrain_tiny_clip', ROOT / 'tools' / 'pretrain_tiny_clip.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pairs_are_deterministic_and_apart_from_the_demo():
    a, attrs = generate_pairs(12, 32, seed=3)
    b, _ = generate_pairs(6, 32, seed=3)
    assert np.array_equal(a[:6], b)  # a larger set extends a smaller one
    assert not np.array_equal(generate_pairs(6, 32, seed=4)[0], b)
    assert PAIRS_STREAM not in SPLIT_STREAMS.values()  # never the demo's train/val/test/catalog draws
    assert not {'circle', 'square', 'triangle'} & set(SHAPES)  # the demo's shapes
    blank = [img for img, at in zip(a, attrs) if at['count'] == 0]
    assert all(img.std(axis=(0, 1)).max() < 12 for img in blank)  # no object drawn: only background noise


def test_captions_name_the_count_and_never_the_task_prompt():
    rng = np.random.default_rng(0)
    attrs = [dict(count=c, shape='star', colour='red', size='small', bg='dark') for c in range(13)] * 30
    texts = captions(attrs, rng)
    check_not_task_prompt(texts)
    by_count = {c: ' | '.join(t for t, a in zip(texts, attrs) if a['count'] == c) for c in range(13)}
    for word in ('a pair of', 'a few', 'several', 'many'):
        assert any(word in by_count[c] for c in range(13))
    assert all(word not in by_count[2] for word in ('several', 'many', 'lots'))  # concepts follow the count
    assert 'a single' in by_count[1] or 'a lone' in by_count[1]
    assert all(q in CONCEPTS[c] for c in range(1, 13) for q in CONCEPTS[c])
    with pytest.raises(ValueError, match='task prompt'):
        check_not_task_prompt(['a picture of objects, there are several'])
    assert caption(dict(count=0, shape='ring', colour='red', size='large', bg='light'), rng)


def test_pretraining_tool_writes_weights_the_loader_reads(tmp_path):
    tool = load_tool()
    argv = ['--model-name', 'numclip-tiny', '--num-pairs', '24', '--steps', '2', '--batch-size', '8',
            '--warmup-steps', '1', '--image-size', '32']
    out = tmp_path / 'tiny.safetensors'
    summary = tool.main(['--out', str(out), *argv])
    assert summary['config']['steps'] == 2 and np.isfinite(summary['final_loss'])
    loaded = build_open_clip('numclip-tiny', pretrained=str(out))  # by path, as any CLIP file
    fresh = build_open_clip('numclip-tiny')
    assert not torch.equal(loaded.visual.conv1.weight, fresh.visual.conv1.weight)
    again = tmp_path / 'again.safetensors'
    tool.main(['--out', str(again), *argv])
    first, second = read_clip_state_dict(str(out)), read_clip_state_dict(str(again))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)  # seeded
    assert (tmp_path / 'tiny.json').is_file()


def test_packaged_weights_load_by_tag():
    (model_name, tag), filename = next(iter(PACKAGED_WEIGHTS.items()))
    path = resolve_pretrained(model_name, tag)
    assert Path(path).name == filename and Path(path).stat().st_size < 10e6
    model = build_open_clip(model_name, tag)
    state = read_clip_state_dict(path)
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    assert model.logit_scale.exp() > 14.3  # learned beyond open_clip's initial 1/0.07
    with pytest.raises(ValueError, match=tag):  # the tag belongs to numclip-demo only
        build_open_clip('numclip-tiny', tag)


@pytest.fixture(scope='module')
def zero_shot_accuracy():
    """Bin accuracy of zero-shot CLIP (configs/baselines/zeroshot_clip_demo.py, nothing trained) on 200 demo
    validation images, with the packaged weights and with random ones."""
    from mmengine.config import Config
    from mmpretrain.registry import DATASETS, MODELS
    cfg = Config.fromfile(ROOT / 'configs' / 'baselines' / 'zeroshot_clip_demo.py')
    dataset = DATASETS.build(dict(cfg.val_dataloader.dataset, num_samples=200))
    batch = [dataset[i] for i in range(len(dataset))]
    accuracy = {}
    for name, pretrained in (('packaged', 'numclip-tiny-synth'), ('random', None)):
        torch.manual_seed(0)
        model = MODELS.build(dict(cfg.model, clip=dict(cfg.model.clip, pretrained=pretrained))).eval()
        with torch.no_grad():
            data = model.data_preprocessor(dict(inputs=[b['inputs'] for b in batch],
                                                data_samples=[b['data_samples'] for b in batch]))
            out = model(**data, mode='predict')
        accuracy[name] = float(np.mean([int(s.pred_label) == int(s.gt_label) for s in out]))
    return accuracy


def test_zero_shot_clip_is_clearly_above_chance(zero_shot_accuracy):
    chance = 1 / 5
    assert zero_shot_accuracy['packaged'] >= chance + 0.15, zero_shot_accuracy
    assert zero_shot_accuracy['packaged'] >= zero_shot_accuracy['random'] + 0.1, zero_shot_accuracy
