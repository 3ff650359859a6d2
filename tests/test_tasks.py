"""The task table: graded and rank tasks as data, and the OrdinalCLIP configs naming one rank task each."""
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config

from numclip_mm.tasks import TASKS, get_task, graded_task, rank_task

ROOT = Path(__file__).resolve().parents[1]


def test_rank_tasks_one_bin_per_value():
    count = get_task('count_ranks')
    assert count.edges == tuple(float(v) for v in range(10)) and count.concepts == tuple(str(v) for v in range(10))
    assert count.upper == 9.0 and count.anchors == count.edges
    np.testing.assert_array_equal(count.value_to_bin([0, 3, 9, 8.5]), [0, 3, 9, 8])
    age = get_task('age_ranks')
    assert age.num_bins == 62 and age.edges[0] == 16 and age.upper == 77
    with pytest.raises(ValueError, match='outside the bins'):
        age.value_to_bin([15])
    words = rank_task('r', [1, 2], 'ctx', words=['one', 'two'])
    assert words.concepts == ('one', 'two') and words.upper == 2.0


def test_graded_task_is_grades_0_to_k_minus_1():
    task = graded_task('g', ['low', 'mid', 'high'], 'quality:')
    assert task.edges == (0.0, 1.0, 2.0) and task.upper == 2.0
    assert TASKS['hci'].edges == (0.0, 1.0, 2.0, 3.0, 4.0)


@pytest.mark.parametrize('name, rank, metric_task', [('demo', 'count_ranks', 'count'), ('morph', 'age_ranks', 'age')])
def test_ordinalclip_configs_name_one_rank_task(name, rank, metric_task):
    cfg = Config.fromfile(ROOT / 'configs' / 'baselines' / f'ordinalclip_{name}.py')
    assert cfg.model.head.task == rank
    assert {cfg[f'{s}_dataloader'].dataset.task for s in ('train', 'val', 'test')} == {rank}
    assert cfg.val_evaluator.task == metric_task
    assert cfg.model.head.prompt_learner.type == 'InterpolatedRankPromptLearner' and cfg.model.neck is None


@pytest.mark.parametrize('name', ['adience', 'aesthetics', 'hci'])
def test_ordinalclip_graded_configs_share_the_head(name):
    cfg = Config.fromfile(ROOT / 'configs' / 'baselines' / f'ordinalclip_{name}.py')
    assert cfg.model.head.task == name and cfg.model.head.prediction == 'expectation'
    assert cfg.model.head.regressor is None and cfg.model.head.i2t_loss.distance_weighted is False


def test_value_range_is_what_values_may_be():
    assert get_task('count').value_range == (0.0, 9.0)
    assert get_task('age').value_range == (0.0, 120.0)
    from numclip_mm.tasks import OrdinalTask
    open_task = OrdinalTask('open', (0, 10), ('low', 'high'), 'it is')
    assert open_task.value_range == (0.0, float('inf'))
    assert open_task.in_range([0, 1e9]).all() and not open_task.in_range([-0.5]).any()


def test_nearest_bin_is_the_bin_of_the_clamped_value():
    count = TASKS['count']  # edges 0 2 4 6 8, upper 9
    values = np.array([-3.0, 0.0, 1.99, 2.0, 7.5, 8.0, 9.0, 40.0])
    np.testing.assert_array_equal(count.nearest_bin(values), [0, 0, 0, 1, 3, 4, 4, 4])
    inside = values[count.in_range(values)]
    np.testing.assert_array_equal(count.nearest_bin(inside), count.value_to_bin(inside))
    with pytest.raises(ValueError, match='non-finite'):
        count.nearest_bin([1.0, np.nan])


def test_config_task_set_once_reaches_head_and_every_dataset(tmp_path):
    """A child config changes its base's task with one top-level `task` (a dict over a base whose head holds a
    name: no `_delete_`, no MMEngine 'cannot inherit' error), and head, datasets and wrapped datasets all get it."""
    from numclip_mm.tasks import apply_config_task
    base = tmp_path / 'base.py'
    base.write_text("model = dict(type='NumCLIP', head=dict(type='NumCLIPHead', task='count'))\n"
                    "train_dataloader = dict(dataset=dict(type='RepeatDataset', times=2,\n"
                    "    dataset=dict(type='ConcatDataset', datasets=[dict(type='DemoCountDataset'),\n"
                    "                                                 dict(type='DemoCountDataset')])))\n"
                    "val_dataloader = dict(dataset=dict(type='DemoCountDataset', split='val'))\n"
                    "test_dataloader = val_dataloader\n")
    child = tmp_path / 'child.py'
    child.write_text("_base_ = ['./base.py']\n"
                     "task = dict(name='count3', edges=[0, 3, 6], concepts=['few', 'several', 'many'],\n"
                     "            context='there are', upper=9)\n")
    cfg = apply_config_task(Config.fromfile(child))
    tasks = [cfg.model.head.task, cfg.val_dataloader.dataset.task, cfg.test_dataloader.dataset.task,
             *(d.task for d in cfg.train_dataloader.dataset.dataset.datasets)]
    assert len(tasks) == 5 and all(get_task(t) == get_task(cfg.task) for t in tasks)
    assert get_task(cfg.model.head.task).concepts == ('few', 'several', 'many')
    assert 'task' not in cfg.train_dataloader.dataset  # wrappers pass it on, they take none themselves
    plain = Config.fromfile(base)
    assert apply_config_task(plain).model.head.task == 'count' and 'task' not in plain.val_dataloader.dataset
    bad = Config(dict(task=dict(name='x', edges=[0, 1], concepts=['a'], context='c')))
    with pytest.raises(ValueError, match='2 edges but 1 concepts'):
        apply_config_task(bad)
