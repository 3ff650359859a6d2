"""tools/analysis/plot_predictions.py writes three valid, non-empty PNGs from a prediction file."""
import importlib.util
import os.path as osp

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from numclip_mm.evaluation import write_predictions

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _load_tool():
    spec = importlib.util.spec_from_file_location('plot_predictions',
                                                  osp.join(ROOT, 'tools', 'analysis', 'plot_predictions.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _predictions(n=120, seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 10, n).astype(float)
    pred = np.clip(gt + rng.normal(0, 1.0, n), 0, 9)
    edges = np.array([0, 2, 4, 6, 8])
    frame = pd.DataFrame({'sample_idx': np.arange(n), 'img_path': None, 'gt_value': gt,
                          'gt_label': np.searchsorted(edges, gt, side='right') - 1, 'pred_value': pred,
                          'pred_label': np.searchsorted(edges, pred, side='right') - 1})
    return frame


@pytest.mark.parametrize('ext', ['csv', 'parquet'])
def test_plot_predictions_writes_pngs(tmp_path, capsys, ext):
    pred_file = write_predictions(_predictions(), str(tmp_path / f'preds.{ext}'))
    paths = _load_tool().main([pred_file, '--out-dir', str(tmp_path / 'plots'), '--task', 'count'])
    assert [osp.basename(p) for p in paths] == ['scatter.png', 'confusion.png', 'mae_per_bin.png']
    assert capsys.readouterr().out.split() == paths
    for path in paths:
        with open(path, 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            arr = np.asarray(img.convert('L'))
            assert min(arr.shape) >= 300 and arr.std() > 5  # a drawn figure, not a blank canvas


def test_plot_predictions_rejects_missing_columns(tmp_path):
    bad = str(tmp_path / 'bad.csv')
    pd.DataFrame({'x': [1]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"bad.csv: missing prediction column\(s\) \['gt_value', 'pred_value'\]"):
        _load_tool().main([bad, '--out-dir', str(tmp_path / 'plots')])


def test_plot_draws_intervals_from_columns_or_a_calibration(tmp_path):
    from numclip_mm.evaluation import Calibration
    tool = _load_tool()
    frame = _predictions(n=40)
    frame['pred_low_0.9'], frame['pred_high_0.9'] = frame['pred_value'] - 1.0, frame['pred_value'] + 1.0
    covered = ((frame['gt_value'] >= frame['pred_low_0.9']) & (frame['gt_value'] <= frame['pred_high_0.9'])).mean()
    assert tool.interval_levels(frame) == ['0.9']
    title = tool.plot_scatter(frame, str(tmp_path / 'a.png'), '0.9')
    assert f'coverage {100 * covered:.1f}%, mean width 2.000' in title
    plain = tool.plot_scatter(frame, str(tmp_path / 'b.png'))
    assert 'coverage' not in plain
    with Image.open(tmp_path / 'a.png') as a, Image.open(tmp_path / 'b.png') as b:
        assert np.abs(np.asarray(a.convert('L'), float) - np.asarray(b.convert('L'), float)).mean() > 1  # bars drawn

    pred_file = write_predictions(frame, str(tmp_path / 'preds.csv'))
    with pytest.raises(SystemExit):  # a level the file has no columns for
        tool.main([pred_file, '--out-dir', str(tmp_path / 'p'), '--level', '0.5'])
    # from a calibration and the bin probabilities: plain method, half-width 0.5
    for k in range(5):
        frame[f'pred_score_{k}'] = 0.2
    cal = Calibration(method='absolute', levels=(0.5,), quantiles={'absolute': {'0.5': 0.5}},
                      anchors=(0, 2, 4, 6, 8), value_range=(0, 9), scale_floor=0.1, task='count')
    cal_file = cal.save(str(tmp_path / 'cal.json'))
    pred_file = write_predictions(frame, str(tmp_path / 'preds2.csv'))
    paths = tool.main([pred_file, '--out-dir', str(tmp_path / 'q'), '--level', '0.5', '--calibration', cal_file])
    assert len(paths) == 3


def test_bins_named_by_concept_and_range():
    from numclip_mm.tasks import get_task
    tool = _load_tool()
    assert tool.bin_names(get_task('count'), 5) == ['none\n[0, 2)', 'few\n[2, 4)', 'several\n[4, 6)', 'many\n[6, 8)',
                                                    'lots\n[8, 9]']
    open_ended = get_task(dict(name='t', edges=[0, 10], concepts=['low', 'high'], context=''))
    assert tool.bin_names(open_ended, 2) == ['low\n[0, 10)', 'high\n>= 10']
    assert tool.bin_names(None, 2) == ['bin 0', 'bin 1']
    with pytest.raises(ValueError, match="bins up to 6, but task 'count' has 5"):
        tool.bin_names(get_task('count'), 7)


def test_scatter_jitters_repeated_truths_only():
    tool = _load_tool()
    y = np.repeat(np.arange(10.0), 48)  # ~48 samples per integer, as a demo test set has
    x = tool.jitter(y)
    assert np.abs(x - y).max() <= 0.3 and len(np.unique(x)) == len(y)  # spread, and never into the next value
    distinct = np.array([0.5, 1.7, 3.2])
    assert tool.jitter(distinct) is distinct


def test_plot_labels_come_from_the_config_task(tmp_path, capsys):
    """--config names the bins by the config's task (here a 3-bin task set once in the config): the tick labels
    drawn are its concepts and ranges."""
    tool = _load_tool()
    frame = _predictions(n=60)
    edges = np.array([0, 3, 6])
    frame['gt_label'] = np.searchsorted(edges, frame['gt_value'], side='right') - 1
    frame['pred_label'] = np.searchsorted(edges, frame['pred_value'], side='right') - 1
    pred_file = write_predictions(frame, str(tmp_path / 'preds.csv'))
    drawn = []
    original = tool.plt.Axes.set_xticklabels
    tool.plt.Axes.set_xticklabels = lambda ax, labels, **kw: drawn.append(list(labels)) or original(ax, labels, **kw)
    try:
        tool.main([pred_file, '--out-dir', str(tmp_path / 'p'), '--config',
                   osp.join(ROOT, 'configs', 'examples', 'count_3bins_demo.py')])
    finally:
        tool.plt.Axes.set_xticklabels = original
    assert ['few\n[0, 3)', 'several\n[3, 6)', 'many\n[6, 9]'] in drawn
    assert 'bins are numbered' not in capsys.readouterr().err
