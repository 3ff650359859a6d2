"""Every shipped config loads (with its mmpretrain `_base_` files) and builds its model."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmpretrain.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / 'configs').rglob('*.py') if '_base_' not in p.parts)
DEMO = [p for p in CONFIGS if p.stem.endswith('_demo')]


def test_test_only_configs_stay_out_of_user_configs():
    assert not (ROOT / 'configs' / 'numclip_tiny.py').exists()
    assert (ROOT / 'tests' / 'configs' / 'numclip_tiny.py').exists()


def test_every_task_has_numclip_and_baseline_configs():
    names = {p.relative_to(ROOT / 'configs').as_posix() for p in CONFIGS}
    for task in ('demo', 'hci', 'aesthetics', 'morph', 'adience'):
        assert f'numclip_{task}.py' in names
        for baseline in ('zeroshot_clip', 'coop', 'ordinalclip', 'regression'):
            assert f'baselines/{baseline}_{task}.py' in names
    for ablation in ('no_fcrc', 'numbers_as_concepts', 'no_regressor', 'no_adapter'):
        assert f'ablations/{ablation}_demo.py' in names


def test_runtime_composes_with_mmpretrain_base():
    """configs/_base_/default_runtime.py inherits mmpretrain's own runtime file and overrides parts of it."""
    cfg = Config.fromfile(ROOT / 'configs' / 'numclip_demo.py')
    assert cfg.default_hooks.visualization.type == 'VisualizationHook'  # from mmpretrain's runtime
    assert cfg.visualizer.type == 'UniversalVisualizer'
    assert cfg.default_hooks.checkpoint.save_best == 'mae'  # ours on top
    assert cfg.custom_imports.imports == ['numclip_mm.register'] and cfg.default_scope == 'mmpretrain'


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.relative_to(ROOT / 'configs').as_posix())
def test_config_builds_its_model(path):
    """Real-data configs name CLIP ViT-B/16 weights that are not on this machine: their model is built with the
    same structure on the tiny CLIP instead, which checks every component name and argument."""
    cfg = Config.fromfile(path)
    assert cfg.train_cfg.max_epochs >= 1 and cfg.test_evaluator.type == 'OrdinalMetric'  # user configs train
    if 'clip' in cfg.model:
        cfg.model.clip = dict(model_name='numclip-tiny', pretrained=None)
    cfg.model.backbone.setdefault('model_name', 'numclip-tiny')
    model = MODELS.build(cfg.model)
    size = 32
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size), mode='tensor')
    assert out.shape[0] == 2


@pytest.mark.parametrize('path', DEMO, ids=lambda p: p.stem)
def test_demo_configs_build_their_datasets(path):
    from mmpretrain.registry import DATASETS
    cfg = Config.fromfile(path)
    dataset_cfg = dict(cfg.test_dataloader.dataset, num_samples=4)
    sample = DATASETS.build(dataset_cfg)[0]
    assert sample['inputs'].shape == (3, 64, 64) and 'gt_value' in sample['data_samples']
