"""Building a model from its config allocates the architecture only; the pretrained CLIP file is read by
``init_weights`` (once, before training) or for zero-shot use, never by test, resume, ``load_from``, the Predictor
with a checkpoint or the scorer. A trained checkpoint works on a machine without the CLIP file."""
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_tool_in_process
from mmengine.config import Config
from mmpretrain.registry import MODELS

from numclip_mm.engine import StrictLoadRunner
from numclip_mm.inference import Predictor, describe_model
from numclip_mm.models import clip_loader
from numclip_mm.models.clip_loader import build_open_clip

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture
def clip_reads(monkeypatch):
    """Every CLIP file read (clip_loader.read_clip_state_dict), recorded."""
    reads = []
    real = clip_loader.read_clip_state_dict

    def counting(path):
        reads.append(path)
        return real(path)
    monkeypatch.setattr(clip_loader, 'read_clip_state_dict', counting)
    return reads


@pytest.fixture(scope='module')
def clip_file(tmp_path_factory):
    """A tiny CLIP with distinctive weights (seed 7, logit_scale 4.2) saved as a state dict."""
    torch.manual_seed(7)
    model = build_open_clip('numclip-tiny')
    with torch.no_grad():
        model.logit_scale.fill_(4.2)
    path = tmp_path_factory.mktemp('clip') / 'tiny_clip.pt'
    torch.save(model.state_dict(), path)
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def demo_config(folder: Path, pretrained) -> str:
    """configs/numclip_demo.py on the tiny CLIP with ``model.clip.pretrained`` set, shrunk to seconds."""
    path = folder / 'demo_pretrained.py'
    path.write_text(f"_base_ = [{str(ROOT / 'configs/numclip_demo.py')!r}]\n"
                    f"model = dict(clip=dict(model_name='numclip-tiny', pretrained={str(pretrained)!r}))\n"
                    "test_dataloader = dict(dataset=dict(num_samples=8, image_size=32))\n")
    return str(path)


def test_build_reads_nothing_init_weights_reads_once(clip_file, clip_reads, tmp_path, caplog):
    path, state = clip_file
    cfg = Config.fromfile(demo_config(tmp_path, path))
    with caplog.at_level(logging.INFO):
        model = MODELS.build(cfg.model)
    assert clip_reads == []
    assert not any('initialized randomly' in r.getMessage() for r in caplog.records)  # open_clip's misleading line
    tower = model.head.text_encoder
    assert not torch.equal(tower.token_embedding.weight, state['token_embedding.weight'])
    model.init_weights()
    assert clip_reads == [str(path)]
    assert torch.equal(model.backbone.visual.conv1.weight, state['visual.conv1.weight'])
    assert torch.equal(tower.token_embedding.weight, state['token_embedding.weight'])
    # the parts derived from CLIP follow the pretrained weights, not the random ones of the build
    assert tower.logit_scale.item() == pytest.approx(4.2)
    assert model.head.logit_scale.item() == pytest.approx(np.exp(4.2), rel=1e-6)
    learner = model.head.prompt_learner
    template = learner.prompt.template
    assert torch.equal(template, state['token_embedding.weight'][learner.prompt.token_ids])
    assert torch.equal(learner.concepts, template[learner.prompt.class_rows, learner.prompt.class_cols])
    assert torch.equal(learner.context, template[0, 1:1 + learner.prompt.num_context])


@pytest.mark.parametrize('config', ['baselines/coop_demo.py', 'baselines/ordinalclip_demo.py',
                                    'baselines/zeroshot_clip_demo.py', 'baselines/regression_demo.py',
                                    'ablations/numbers_as_concepts_demo.py'])
def test_baselines_and_ablations_initialise_from_the_pretrained_weights(clip_file, tmp_path, config):
    """Random context (CoOp) and base ranks (OrdinalCLIP) keep their draw; everything from CLIP follows the file."""
    path, state = clip_file
    cfg = Config.fromfile(str(ROOT / 'configs' / config))
    cfg.merge_from_dict({'model.clip.model_name': 'numclip-tiny', 'model.clip.pretrained': str(path)})
    torch.manual_seed(3)
    model = MODELS.build(cfg.model)
    drawn = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(('base_ranks', 'context'))}
    model.init_weights()
    assert torch.equal(model.backbone.visual.conv1.weight, state['visual.conv1.weight'])
    learner = getattr(model.head, 'prompt_learner', None)
    if learner is None:  # the regression baseline: no text side
        return
    template = learner.prompt.template
    assert torch.equal(template, state['token_embedding.weight'][learner.prompt.token_ids])
    if learner.random_context:
        assert torch.equal(learner.context, drawn['head.prompt_learner.context'])
    else:
        assert torch.equal(learner.context, template[0, 1:1 + learner.prompt.num_context])
    if hasattr(learner, 'base_ranks'):
        assert torch.equal(learner.base_ranks, drawn['head.prompt_learner.base_ranks'])
    else:
        assert torch.equal(learner.concepts, template[learner.prompt.class_rows, learner.prompt.class_cols])


@pytest.fixture(scope='module')
def trained(clip_file, tmp_path_factory):
    """A checkpoint trained (two iterations of tools' Runner) from a config whose CLIP file is then deleted."""
    folder = tmp_path_factory.mktemp('trained')
    clip_path = folder / 'clip.pt'
    clip_path.write_bytes(clip_file[0].read_bytes())
    config = demo_config(folder, clip_path)
    cfg = Config.fromfile(config)
    cfg.merge_from_dict({'work_dir': str(folder / 'work'), 'train_cfg.max_epochs': 1,
                         'train_dataloader.dataset.num_samples': 4, 'train_dataloader.dataset.image_size': 32,
                         'train_dataloader.batch_size': 2, 'train_dataloader.num_workers': 0,
                         'train_dataloader.persistent_workers': False, 'val_cfg': None, 'val_dataloader': None,
                         'val_evaluator': None, 'default_hooks.checkpoint.save_best': None,
                         'default_hooks.checkpoint.interval': 1})
    runner = StrictLoadRunner.from_cfg(cfg)
    runner.train()
    ckpt = folder / 'work' / 'epoch_1.pth'
    assert ckpt.is_file()
    clip_path.unlink()
    return dict(config=config, ckpt=ckpt, folder=folder, model=runner.model)


def test_predictor_loads_a_trained_checkpoint_without_the_clip_file(trained, clip_reads):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    predictor = Predictor(trained['config'], str(trained['ckpt']))
    got = predictor.predict(images)
    assert clip_reads == []
    model = trained['model'].eval()
    with torch.no_grad():
        inputs = torch.stack([predictor.preprocessor(i) for i in images])
        data = model.data_preprocessor(dict(inputs=inputs), False)
        _, raw = model.head.predict_arrays(model.extract_feat(data['inputs']))
    np.testing.assert_allclose(got['value_raw'], raw.numpy(), atol=1e-5)
    assert describe_model(trained['config'], str(trained['ckpt']))['input_size'] == (32, 32)
    with pytest.raises(FileNotFoundError, match='CLIP checkpoint file not found'):  # zero-shot needs the file
        Predictor(trained['config'])


def test_test_tool_loads_a_trained_checkpoint_without_the_clip_file(trained, tmp_path):
    proc = run_tool_in_process('tools/test.py', trained['config'], trained['ckpt'], '--work-dir', tmp_path,
                               '--cfg-options', 'test_dataloader.num_workers=0',
                               'test_dataloader.persistent_workers=False')
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert 'mae' in log and 'initialized randomly' not in log


def test_load_from_and_resume_skip_the_clip_file(trained, clip_reads, tmp_path):
    """Runner.train calls init_weights before loading: with a checkpoint to load, the CLIP file (deleted here) is
    not read; resume picks up the checkpoint's weights."""
    cfg = Config.fromfile(trained['config'])
    cfg.merge_from_dict({'work_dir': str(tmp_path), 'train_cfg.max_epochs': 1, 'load_from': str(trained['ckpt']),
                         'train_dataloader.dataset.num_samples': 2, 'train_dataloader.dataset.image_size': 32,
                         'train_dataloader.batch_size': 2, 'train_dataloader.num_workers': 0,
                         'train_dataloader.persistent_workers': False, 'val_cfg': None, 'val_dataloader': None,
                         'val_evaluator': None, 'optim_wrapper.optimizer.lr': 0.0, 'default_hooks.checkpoint': None})
    runner = StrictLoadRunner.from_cfg(cfg)
    runner.train()
    assert clip_reads == []
    frozen = 'head.text_encoder.token_embedding.weight'
    assert torch.equal(runner.model.state_dict()[frozen], trained['model'].state_dict()[frozen].cpu())


def test_predictor_loads_exactly_the_bytes_of_the_expected_digest(trained, tmp_path):
    """With ``checkpoint_sha256`` (what the scorer's actors pass) the bytes read are the bytes checked and loaded; a
    file whose digest differs is refused before any weight is used."""
    from numclip_mm.inference import CheckpointChangedError
    from numclip_mm.shared import file_digest
    digest = file_digest(str(trained['ckpt']))
    predictor = Predictor(trained['config'], str(trained['ckpt']), checkpoint_sha256=digest)
    assert torch.equal(predictor.model.state_dict()['neck.down.weight'],
                       trained['model'].state_dict()['neck.down.weight'].cpu())
    with pytest.raises(CheckpointChangedError, match='changed since the job was planned') as err:
        Predictor(trained['config'], str(trained['ckpt']), checkpoint_sha256='0' * 64)
    assert str(trained['ckpt']) in str(err.value) and digest in str(err.value)
