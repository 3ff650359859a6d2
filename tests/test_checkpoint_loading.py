"""Every checkpoint load is weights-only whatever the environment says, and strict unless asked otherwise:
MMEngine's CheckpointLoader, the Runner (load_from / resume / tools/test.py), the Predictor, and the tools' exit codes.
Also the device-chosen defaults (distributed backend, AMP fallback) and the schedule's learning rates."""
import os
from pathlib import Path

import pytest
import torch
from helpers import TINY_CONFIG, Payload, run_tool_in_process, write_tiny_config
from mmengine.config import Config
from mmengine.runner import CheckpointLoader, load_checkpoint
from mmpretrain.registry import MODELS

from numclip_mm.engine import StrictLoadRunner, choose_dist_backend, fall_back_from_amp, resolve_dist_backend
from numclip_mm.utils import CheckpointMismatchError, UnsafeCheckpointError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures('one_torch_thread')
TINY_CLIP = {'model.clip.model_name': 'numclip-tiny', 'model.clip.pretrained': None}  # the demo's CLIP, shrunk
TINY_DEMO = [  # configs/numclip_demo.py shrunk to seconds (as in test_tools.py)
    'model.clip.model_name=numclip-tiny', 'model.clip.pretrained=None',
    'test_dataloader.dataset.num_samples=8', 'test_dataloader.dataset.image_size=32',
]



def build_model(config=TINY_CONFIG, **cfg_options):
    cfg = Config.fromfile(str(config))
    cfg.merge_from_dict(cfg_options)
    return MODELS.build(cfg.model)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """A demo-config checkpoint, the same with a pickle payload, and the payload's marker path."""
    root = tmp_path_factory.mktemp('ckpts')
    torch.manual_seed(0)
    model = build_model(ROOT / 'configs/numclip_demo.py', **TINY_CLIP)
    good = root / 'demo_tiny.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {'epoch': 1, 'iter': 4}}, good)
    marker = root / 'payload_ran'
    evil = root / 'evil.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {'epoch': 1, 'note': Payload(str(marker))}}, evil)
    return dict(root=root, good=good, evil=evil, marker=marker, state=model.state_dict())


def test_payload_is_real(files, tmp_path):
    """Guard for the refusal tests below: an unrestricted torch.load really runs the payload."""
    marker = tmp_path / 'ran'
    path = tmp_path / 'payload.pth'
    torch.save({'x': Payload(str(marker))}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.fixture
def force_unsafe_env(monkeypatch):
    """The workaround users set for other tools: makes every torch.load without weights_only unpickle anything."""
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')


def test_mmengine_loaders_refuse_payload_despite_env(files, force_unsafe_env):
    with pytest.raises(UnsafeCheckpointError, match='evil.pth'):
        CheckpointLoader.load_checkpoint(str(files['evil']))
    with pytest.raises(UnsafeCheckpointError, match='evil.pth'):
        load_checkpoint(torch.nn.Linear(2, 2), str(files['evil']))
    assert not files['marker'].exists()
    loaded = CheckpointLoader.load_checkpoint(str(files['good']))  # an honest checkpoint still loads
    assert torch.equal(loaded['state_dict']['neck.down.weight'], files['state']['neck.down.weight'])


def test_predictor_refuses_payload_despite_env(files, force_unsafe_env, tmp_path):
    from numclip_mm.inference import Predictor, describe_model
    cfg = write_tiny_config(tmp_path / 'tiny.py')
    with pytest.raises(UnsafeCheckpointError, match='evil.pth'):
        Predictor(cfg, str(files['evil']))
    with pytest.raises(UnsafeCheckpointError, match='evil.pth'):  # the scorer's up-front check (memory-mapped)
        describe_model(cfg, str(files['evil']))
    assert not files['marker'].exists()


def make_runner(tmp_path, model, **cfg):
    return StrictLoadRunner(model=model, work_dir=str(tmp_path / 'work'), cfg=dict(cfg),
                            default_scope='mmpretrain')


def test_runner_loads_strictly_and_names_file_and_keys(files, tmp_path):
    no_adapter = build_model(ROOT / 'configs/numclip_demo.py',
                             **TINY_CLIP, **{'model.neck': None})
    runner = make_runner(tmp_path, no_adapter)
    with pytest.raises(CheckpointMismatchError) as err:
        runner.load_checkpoint(str(files['good']))  # MMEngine's default strict=False is overridden
    msg = str(err.value)
    assert str(files['good']) in msg and 'unexpected keys' in msg and 'neck.down.weight' in msg


def test_runner_unwraps_test_time_augmentation(files, tmp_path):
    """tools/test.py --tta wraps the model (keys 'module.*'); the checkpoint still fits, as MMEngine unwraps it."""
    from mmpretrain.models import AverageClsScoreTTA
    model = build_model(ROOT / 'configs/numclip_demo.py', **TINY_CLIP)
    tta = AverageClsScoreTTA(module=model)
    make_runner(tmp_path, tta).load_checkpoint(str(files['good']))
    assert torch.equal(model.state_dict()['neck.down.weight'], files['state']['neck.down.weight'])


def test_partial_load_is_an_explicit_opt_in(files, tmp_path):
    no_adapter = build_model(ROOT / 'configs/numclip_demo.py',
                             **TINY_CLIP, **{'model.neck': None})
    runner = make_runner(tmp_path, no_adapter, load_strict=False)
    runner.load_checkpoint(str(files['good']))
    got = no_adapter.state_dict()
    shared = [k for k in got if k in files['state']]
    assert shared and all(torch.equal(got[k], files['state'][k]) for k in shared)


def run_tool(*args, env=None):
    """A tool in this process (``run_tool_in_process``); ``env`` is set for the run only (torch reads
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` at every ``torch.load``, so the run sees it as a new interpreter would)."""
    return run_tool_in_process(*args, env=env)


def test_test_tool_fails_on_checkpoint_of_another_config(files, tmp_path):
    proc = run_tool('tools/test.py', 'configs/ablations/no_adapter_demo.py', files['good'], '--work-dir', tmp_path,
                    '--cfg-options', *TINY_DEMO)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: checkpoint ') and str(files['good']) in last and 'neck.down.weight' in last
    assert 'Traceback' not in proc.stderr
    # tools/calibrate.py runs the model through the same strict runner
    proc = run_tool('tools/calibrate.py', 'configs/ablations/no_adapter_demo.py', files['good'], '--work-dir',
                    tmp_path / 'cal', '--split', 'test', '--cfg-options', *TINY_DEMO)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: checkpoint ') and 'neck.down.weight' in last and 'Traceback' not in proc.stderr
    assert not Path(str(files['good']) + '.calibration.json').exists()


def test_tools_refuse_payload_despite_env(files, tmp_path):
    env = {'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD': '1'}
    proc = run_tool('tools/test.py', 'configs/numclip_demo.py', files['evil'], '--work-dir', tmp_path / 'test',
                    '--cfg-options', *TINY_DEMO, env=env)
    assert proc.returncode == 1 and 'refusing to load checkpoint' in proc.stderr and str(files['evil']) in proc.stderr
    proc = run_tool('tools/train.py', 'configs/numclip_demo.py', '--resume', files['evil'], '--work-dir',
                    tmp_path / 'train', '--cfg-options', *TINY_DEMO, 'train_dataloader.dataset.num_samples=8',
                    'train_dataloader.dataset.image_size=32', 'val_dataloader.dataset.num_samples=8',
                    'val_dataloader.dataset.image_size=32', env=env)
    assert proc.returncode == 1 and 'refusing to load checkpoint' in proc.stderr, proc.stderr[-3000:]
    assert not files['marker'].exists()


# ---------------------------------------------------------------- device-chosen defaults
@pytest.mark.parametrize('cuda,expected', [(True, 'nccl'), (False, 'gloo')])
def test_dist_backend_follows_the_device(monkeypatch, cuda, expected):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    assert choose_dist_backend('auto') == choose_dist_backend(None) == expected
    assert choose_dist_backend('gloo') == 'gloo' and choose_dist_backend('nccl') == 'nccl'  # explicit wins
    cfg = Config.fromfile(str(ROOT / 'configs/numclip_morph.py'))
    assert cfg.env_cfg.dist_cfg.backend == 'auto'
    assert resolve_dist_backend(cfg) == expected and cfg.env_cfg.dist_cfg.backend == expected


@pytest.mark.parametrize('cuda,expected', [(True, 'nccl'), (False, 'gloo')])
def test_runner_starts_process_group_with_chosen_backend(monkeypatch, cuda, expected):
    from mmengine.runner import Runner
    seen = {}
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    monkeypatch.setattr(Runner, 'setup_env', lambda self, env_cfg: seen.update(env_cfg))
    runner = StrictLoadRunner.__new__(StrictLoadRunner)
    runner.setup_env(dict(cudnn_benchmark=False, dist_cfg=dict(backend='auto', timeout=60)))
    assert seen['dist_cfg'] == dict(backend=expected, timeout=60)


def gloo_threads():
    """The names of this process's gloo threads (PyTorch names its worker threads pt_gloo_runloop)."""
    names = []
    for tid in os.listdir('/proc/self/task'):
        try:
            names.append(Path(f'/proc/self/task/{tid}/comm').read_text().strip())
        except FileNotFoundError:  # the thread ended after the listing (a gloo thread being joined, say)
            pass
    return sorted(name for name in names if 'gloo' in name)


@pytest.mark.skipif(not Path('/proc/self/task').is_dir(), reason='thread names are read from /proc (Linux)')
def test_destroy_distributed_joins_the_gloo_threads():
    """The tools end a finished run's process group (destroy_distributed): gloo's worker threads are joined then, not
    left running into interpreter shutdown, where one still releasing the last collective's tensors aborts the
    process (SIGABRT after a successful torchrun run). The DDP model lives on in a reference cycle, as in MMEngine's
    Runner."""
    import torch.distributed as dist

    from numclip_mm.engine import CPUDistributedDataParallel, destroy_distributed
    destroy_distributed()  # nothing started: nothing to do
    assert not dist.is_initialized() and gloo_threads() == []
    dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
    try:
        runner = type('Runner', (), {})()
        runner.loop, runner.model = runner, CPUDistributedDataParallel(torch.nn.Linear(2, 1))
        runner.model(torch.ones(1, 2)).sum().backward()
        dist.broadcast_object_list([{'mae': 1.0}])  # what MMEngine's evaluator does last
        assert 'pt_gloo_runloop' in gloo_threads()
        del runner
    finally:
        destroy_distributed()
    assert not dist.is_initialized() and gloo_threads() == []


def test_amp_configs_fall_back_on_cpu(monkeypatch):
    import numclip_mm.engine.device_defaults as defaults
    cfg = Config.fromfile(str(ROOT / 'configs/numclip_hci.py'))
    monkeypatch.setattr(defaults, 'amp_available', lambda: True)
    assert not fall_back_from_amp(cfg) and cfg.optim_wrapper.type == 'AmpOptimWrapper'
    monkeypatch.setattr(defaults, 'amp_available', lambda: False)
    notices = []
    monkeypatch.setattr(defaults, 'print_log', lambda msg, **kw: notices.append(msg))
    assert fall_back_from_amp(cfg)
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    assert cfg.optim_wrapper.optimizer.type == 'RAdam'
    assert len(notices) == 1 and 'OptimWrapper' in notices[0] and '\n' not in notices[0]
    # the explicit swap docs/training_and_testing.md shows leaves AMP's loss_scale behind, which OptimWrapper would
    # reject: it is dropped
    cfg = Config.fromfile(str(ROOT / 'configs/numclip_morph.py'))
    cfg.merge_from_dict({'optim_wrapper.type': 'OptimWrapper'})
    assert not fall_back_from_amp(cfg) and 'loss_scale' not in cfg.optim_wrapper


def test_schedule_trains_every_trainable_group_at_the_method_lr():
    """The method: image encoder, adapter, regressor, concept tokens (and aesthetics' context) all at 1e-5; the
    text tower, logit scale and frozen context get no gradient."""
    from mmengine.optim import build_optim_wrapper
    for name, context_trains in (('numclip_morph', False), ('numclip_aesthetics', True)):
        cfg = Config.fromfile(str(ROOT / f'configs/{name}.py'))
        cfg.model.clip.update(model_name='numclip-tiny', pretrained=None)
        model = MODELS.build(cfg.model)
        cfg.optim_wrapper.type = 'OptimWrapper'
        cfg.optim_wrapper.pop('loss_scale')
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        assert {g['lr'] for g in wrapper.optimizer.param_groups} == {1e-5}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert any(n.startswith('backbone.') for n in trainable)
        assert any(n.startswith('neck.') for n in trainable)
        assert any('regressor' in n for n in trainable)
        assert any(n.endswith('concepts') for n in trainable)
        assert any(n.endswith('context') for n in trainable) == context_trains
        assert not any('text_encoder' in n or 'logit_scale' in n for n in trainable)


def test_train_tool_partial_load_is_opt_in(files, tmp_path):
    """docs/training_and_testing.md: `tools/train.py CONFIG --partial-load --cfg-options load_from=CKPT` fine-tunes
    from a checkpoint of another config; without the flag the same command stops with the mismatch."""
    tiny_train = [*TINY_DEMO, 'train_dataloader.dataset.num_samples=8', 'train_dataloader.dataset.image_size=32',
                  'val_dataloader.dataset.num_samples=8', 'val_dataloader.dataset.image_size=32',
                  'train_cfg.max_epochs=1', f'load_from={files["good"]}']
    args = ['tools/train.py', 'configs/ablations/no_adapter_demo.py', '--work-dir', tmp_path, '--cfg-options']
    proc = run_tool(*args, *tiny_train)
    assert proc.returncode == 1 and 'neck.down.weight' in proc.stderr.strip().splitlines()[-1]
    proc = run_tool(*args[:-1], '--partial-load', '--cfg-options', *tiny_train)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'partial load of' in proc.stdout + proc.stderr and (tmp_path / 'epoch_1.pth').is_file()
