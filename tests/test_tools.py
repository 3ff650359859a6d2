"""End-to-end checks of tools/train.py and tools/test.py through MMEngine's Runner, as a user runs them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_tool_in_process

ROOT = Path(__file__).resolve().parents[1]

# A tiny NumCLIP on 32x32 demo images: 1 epoch of 64 samples takes a few seconds on 2 CPU cores.
TINY = [
    'model.clip.model_name=numclip-tiny', 'model.clip.pretrained=None',
    'train_dataloader.dataset.num_samples=64', 'train_dataloader.dataset.image_size=32',
    'val_dataloader.dataset.num_samples=32', 'val_dataloader.dataset.image_size=32',
    'test_dataloader.dataset.num_samples=32', 'test_dataloader.dataset.image_size=32',
    'train_cfg.val_interval=1', 'default_hooks.logger.interval=1',
]


def run_tool(*args, check=True, timeout=240):
    """``python <args>``: a script under tools/ runs in this process (``run_tool_in_process``), anything else
    (``-c CODE``) in a new interpreter."""
    if str(args[0]).startswith('tools/'):
        proc = run_tool_in_process(*args)
    else:
        env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONPATH=str(ROOT))
        proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
    return proc


def read_scalars(work_dir: Path):
    """The metrics MMEngine's LoggerHook wrote, one dict per logged step/evaluation."""
    files = sorted(work_dir.glob('*/vis_data/scalars.json'))
    assert files, f'no scalars.json under {work_dir}'
    return [json.loads(line) for line in files[-1].read_text().splitlines()]


def test_registry_round_trip_from_config_file(tmp_path):
    """A fresh process with nothing imported: `custom_imports` in the config alone registers everything."""
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("custom_imports = dict(imports=['numclip_mm.register'], allow_failed_imports=False)\n"
                   "default_scope = 'mmpretrain'\n"
                   "model = dict(type='NumCLIP', clip=dict(model_name='numclip-tiny'),\n"
                   "             backbone=dict(type='OpenCLIPVisionBackbone'), neck=dict(type='ResidualAdapter'),\n"
                   "             head=dict(type='NumCLIPHead', task='count'))\n"
                   "dataset = dict(type='DemoCountDataset', split='val', num_samples=4, image_size=32,\n"
                   "               pipeline=[dict(type='PackInputs', algorithm_keys=['gt_value'])])\n"
                   "metric = dict(type='OrdinalMetric')\n")
    code = f"""
from mmengine.config import Config
cfg = Config.fromfile({str(cfg)!r})
from mmengine.registry import init_default_scope
init_default_scope(cfg.default_scope)
from mmpretrain.registry import DATASETS, METRICS, MODELS
model = MODELS.build(cfg.model)
dataset = DATASETS.build(cfg.dataset)
metric = METRICS.build(cfg.metric)
sample = dataset[0]['data_samples']
print(type(model).__name__, type(dataset).__name__, type(metric).__name__, int(sample.gt_label), float(sample.gt_value))
"""
    out = run_tool('-c', code).stdout.split()
    assert out[:3] == ['NumCLIP', 'DemoCountDataset', 'OrdinalMetric']
    assert 0 <= int(out[3]) < 5 and 0 <= float(out[4]) <= 9


def test_train_resume_and_test_on_cpu(tmp_path):
    work = tmp_path / 'work'
    run_tool('tools/train.py', 'configs/numclip_demo.py', '--work-dir', work, '--cfg-options', *TINY,
             'train_cfg.max_epochs=1')
    assert (work / 'epoch_1.pth').is_file()
    # resume: epoch 2 continues from epoch 1 (the log says so), and the optimizer state came along
    proc = run_tool('tools/train.py', 'configs/numclip_demo.py', '--work-dir', work, '--resume', '--cfg-options',
                    *TINY, 'train_cfg.max_epochs=2')
    assert 'resumed epoch: 1' in (proc.stdout + proc.stderr)
    assert (work / 'epoch_2.pth').is_file()
    val = [s for s in read_scalars(work) if 'mae' in s]
    assert val and val[-1]['step'] == 2

    out = tmp_path / 'pred.csv'
    run_tool('tools/test.py', 'configs/numclip_demo.py', work / 'epoch_2.pth', '--work-dir', tmp_path / 'test',
             '--out', out, '--show-dir', tmp_path / 'vis', '--interval', 16, '--cfg-options', *TINY)
    assert len(list((tmp_path / 'vis').glob('*.png'))) == 2  # samples 0 and 16 of 32, drawn by mmpretrain
    import pandas as pd
    table = pd.read_csv(out)
    assert len(table) == 32
    assert {'gt_value', 'gt_label', 'pred_value', 'pred_label'} <= set(table.columns)
    assert table['pred_value'].between(-1, 20).all()


def test_new_task_example_config_trains_tests_and_predicts(tmp_path):
    """configs/examples/count_3bins_demo.py (the demo with a 3-bin task set in one line) trains, tests and loads in
    the Predictor with 3 bins everywhere: head, datasets, metrics, the --out file and the predicted labels."""
    config = 'configs/examples/count_3bins_demo.py'
    work = tmp_path / 'work'
    run_tool('tools/train.py', config, '--work-dir', work, '--cfg-options', *TINY, 'train_cfg.max_epochs=1')
    out = tmp_path / 'pred.csv'
    run_tool('tools/test.py', config, work / 'epoch_1.pth', '--work-dir', tmp_path / 'test', '--out', out,
             '--cfg-options', *TINY)
    import numpy as np
    import pandas as pd

    from numclip_mm.tasks import get_task
    table = pd.read_csv(out)
    task = get_task(dict(name='count3', edges=[0, 3, 6], concepts=['few', 'several', 'many'], context='', upper=9))
    assert [c for c in table.columns if c.startswith('pred_score_')] == ['pred_score_0', 'pred_score_1',
                                                                         'pred_score_2']
    np.testing.assert_array_equal(table['gt_label'], task.value_to_bin(table['gt_value']))
    np.testing.assert_array_equal(table['pred_label'], task.value_to_bin(table['pred_value']))
    assert set(table['pred_bin_argmax']) <= {0, 1, 2}
    val = [s for s in read_scalars(work) if 'mae' in s]
    assert val and 'mae_bin_2' in val[-1] and 'mae_bin_3' not in val[-1]  # the metrics saw 3 bins
    from mmengine.config import Config

    from numclip_mm.inference import Predictor
    cfg = Config.fromfile(ROOT / config)
    cfg.merge_from_dict({'model.clip.model_name': 'numclip-tiny'})
    predictor = Predictor(cfg, str(work / 'epoch_1.pth'))  # strict load: the 3-bin shapes fit
    out = predictor.predict(np.zeros((32, 32, 3), np.uint8))
    assert predictor.task.name == 'count3' and out['label'][0] in ('few', 'several', 'many')


def test_test_tool_out_pq_is_parquet_and_unknown_suffix_is_refused(tmp_path):
    out = tmp_path / 'pred.pq'
    run_tool('tools/test.py', 'configs/numclip_demo.py', '--work-dir', tmp_path / 'test', '--out', out,
             '--cfg-options', *TINY)
    import pyarrow.parquet as pq
    assert pq.read_table(out).num_rows == 32  # a Parquet table, not a pickle under a Parquet name
    proc = run_tool('tools/test.py', 'configs/numclip_demo.py', '--out', tmp_path / 'pred.txt', '--cfg-options',
                    *TINY, check=False)
    assert proc.returncode == 2 and '--out' in proc.stderr and '.parquet' in proc.stderr
    assert not (tmp_path / 'pred.txt').exists()


def test_test_tool_bad_checkpoint_path_names_the_file(tmp_path):
    missing = tmp_path / 'nope' / 'epoch_9.pth'
    proc = run_tool('tools/test.py', 'configs/numclip_demo.py', missing, '--work-dir', tmp_path,
                    '--cfg-options', *TINY, check=False)
    assert proc.returncode != 0
    assert str(missing) in proc.stderr


def test_mmpretrain_own_config_still_trains(tmp_path):
    """The plugin does not break the host: mmpretrain's ResNet-18 CIFAR model, schedule and runtime `_base_`
    files, composed with our demo data, train through our tools/train.py."""
    cfg = tmp_path / 'resnet_demo.py'
    cfg.write_text(
        "_base_ = ['mmpretrain::_base_/models/resnet18_cifar.py', 'mmpretrain::_base_/schedules/cifar10_bs128.py',\n"
        "          'mmpretrain::_base_/default_runtime.py']\n"
        "custom_imports = dict(imports=['numclip_mm.register'], allow_failed_imports=False)\n"
        "model = dict(head=dict(num_classes=5))\n"
        "pipe = [dict(type='PackInputs')]\n"
        "train_dataloader = dict(batch_size=16, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=True),\n"
        "    dataset=dict(type='DemoCountDataset', split='train', num_samples=32, image_size=32, pipeline=pipe))\n"
        "val_dataloader = dict(batch_size=16, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),\n"
        "    dataset=dict(type='DemoCountDataset', split='val', num_samples=16, image_size=32, pipeline=pipe))\n"
        "val_evaluator = dict(type='Accuracy', topk=(1,))\n"
        "test_dataloader = val_dataloader\n"
        "test_evaluator = val_evaluator\n"
        "train_cfg = dict(max_epochs=1, val_interval=1)\n")
    work = tmp_path / 'work'
    run_tool('tools/train.py', cfg, '--work-dir', work)
    assert (work / 'epoch_1.pth').is_file()
    assert any('accuracy/top1' in s for s in read_scalars(work))


def test_distributed_train_and_test_with_two_processes(tmp_path):
    """torchrun + gloo on CPU: 2-process training runs, and a 2-process test of its checkpoint gives exactly the
    metrics of a 1-process test (DDP-safe sampler, results collected across ranks)."""
    work = tmp_path / 'ddp'
    env = dict(os.environ, OMP_NUM_THREADS='1', PORT='29571', PYTHON=sys.executable)
    tiny = [*TINY, 'train_cfg.max_epochs=1', 'train_dataloader.batch_size=16']
    proc = subprocess.run(['bash', 'tools/dist_train.sh', 'configs/numclip_demo.py', '2', '--work-dir', str(work),
                           '--cfg-options', *tiny], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert 'Distributed training is not used' not in proc.stdout + proc.stderr
    ckpt = work / 'epoch_1.pth'
    assert ckpt.is_file()

    def options(name):
        return ['--work-dir', str(tmp_path / 'test'), '--out', str(tmp_path / f'{name}.json'), '--out-item', 'metrics',
                '--cfg-options', *TINY]

    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the launcher's processes (OMP_NUM_THREADS=1)
    try:  # the 1-process reference: tools/test.py in this process
        run_tool('tools/test.py', 'configs/numclip_demo.py', ckpt, *options('single'))
    finally:
        torch.set_num_threads(threads)
    run = subprocess.run(['bash', 'tools/dist_test.sh', 'configs/numclip_demo.py', str(ckpt), '2', *options('double')],
                         cwd=ROOT, env=dict(env, PORT='29572'), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-5000:]
    single, double = (json.loads((tmp_path / f'{name}.json').read_text()) for name in ('single', 'double'))
    assert single.keys() == double.keys() and 'mae' in single
    for key in single:
        assert double[key] == pytest.approx(single[key], abs=1e-6), key


def test_train_speed_benchmark_reports_figures(tmp_path):
    """tools/benchmark/train_speed.py on the small demo model: the figures it prints are the ones it writes."""
    out = tmp_path / 'speed.json'
    proc = run_tool('tools/benchmark/train_speed.py', '--config', 'configs/numclip_demo.py', '--batch-size', 3,
                    '--iters', 2, '--warmup', 1, '--threads', 1, '--out', out)
    result = json.loads(out.read_text())
    assert result['batch_size'] == 3 and result['timed_iters'] == 2 and result['image_size'] == [64, 64]
    assert result['images_per_s'] == pytest.approx(3 / result['s_per_iter'])
    assert result['device'].startswith('CPU') and result['peak_memory_kind'] == 'peak_rss'
    assert result['peak_memory_mib'] > 100  # torch + the model: a real resident set, in MiB
    assert f"{result['images_per_s']:.2f} images/s" in proc.stdout
    import torch
    if not torch.cuda.is_available():  # --amp needs a GPU: without one it stops and says what to pass
        refused = run_tool('tools/benchmark/train_speed.py', '--amp', '--out', tmp_path / 'x.json', check=False)
        assert refused.returncode != 0 and 'drop --amp' in refused.stderr
