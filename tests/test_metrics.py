"""OrdinalMetric and DumpOrdinalPredictions against numbers computed by hand."""
import math

import numpy as np
import pytest
import torch
from mmengine.evaluator import Evaluator
from mmpretrain.registry import METRICS
from mmpretrain.structures import DataSample

from numclip_mm.evaluation import (
    Calibration,
    DumpOrdinalPredictions,
    OrdinalMetric,
    average_ranks,
    load_predictions,
    quadratic_weighted_kappa,
    spearman,
)

# Task 'count' (edges 0, 2, 4, 6, 8). gt values 1, 4, 5, 3 -> bins 0, 2, 2, 1.
PRED_VALUE = [1.0, 2.5, 6.0, 9.0]
GT_VALUE = [1.0, 4.0, 5.0, 3.0]
PRED_LABEL = [0, 1, 3, 4]
GT_LABEL = [0, 2, 2, 1]


def _samples():
    return [dict(pred_value=torch.tensor(p), pred_label=torch.tensor([pl]), gt_value=g, gt_label=torch.tensor([gl]),
                 pred_score=torch.nn.functional.one_hot(torch.tensor(pl), 5).float(), sample_idx=i,
                 img_path=f'img_{i}.png')
            for i, (p, g, pl, gl) in enumerate(zip(PRED_VALUE, GT_VALUE, PRED_LABEL, GT_LABEL))]


def test_average_ranks_ties():
    np.testing.assert_allclose(average_ranks(np.array([10, 20, 20, 5, 20])), [2, 4, 4, 1, 4])


def test_spearman_with_ties_hand_computed():
    # ranks pred (1, 2.5, 2.5, 4), gt (1, 3, 2, 4): sum d_p d_g = 4.5, sum d_p^2 = 4.5, sum d_g^2 = 5 -> 3/sqrt(10)
    assert spearman(np.array([1, 2, 2, 3.]), np.array([1, 3, 2, 4.])) == pytest.approx(3 / math.sqrt(10))
    assert spearman(np.array([1, 2, 3.]), np.array([3, 2, 1.])) == pytest.approx(-1)
    assert math.isnan(spearman(np.array([1, 1, 1.]), np.array([1, 2, 3.])))


def test_qwk_hand_computed_3x3():
    # O = [[1,1,0],[0,1,1],[1,0,1]], E = 2/3 everywhere, w = (i-j)^2/4
    # sum wO = .25 + .25 + 1 = 1.5, sum wE = 2/3 * 3 = 2 -> kappa = 1 - 1.5/2 = 0.25
    gt, pred = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 2, 2, 0])
    assert quadratic_weighted_kappa(gt, pred, 3) == pytest.approx(0.25)
    assert quadratic_weighted_kappa(gt, gt, 3) == pytest.approx(1.0)
    # reversing the classes is maximal disagreement: sum wO = 4 * 1 = 4 (classes 0<->2), sum wE = 2 -> -1
    assert quadratic_weighted_kappa(np.array([0, 0, 2, 2]), np.array([2, 2, 0, 0]), 3) == pytest.approx(-1.0)


def test_metric_process_and_compute_hand_values():
    metric = OrdinalMetric(cs_thresholds=(1, 2, 5), num_classes=5)
    metric.process({}, _samples())
    out = metric.compute_metrics(metric.results)
    assert out['mae'] == pytest.approx((0 + 1.5 + 1 + 6) / 4)
    assert out['accuracy'] == pytest.approx(25.0)
    assert out['off_by_one'] == pytest.approx(75.0)  # |diffs| 0, 1, 1, 3
    assert out['cs@1'] == pytest.approx(50.0)
    assert out['cs@2'] == pytest.approx(75.0)
    assert out['cs@5'] == pytest.approx(75.0)
    assert out['mae_bin_0'] == pytest.approx(0.0)
    assert out['mae_bin_1'] == pytest.approx(6.0)
    assert out['mae_bin_2'] == pytest.approx(1.25)
    assert 'mae_bin_3' not in out
    # ranks pred (1, 2, 3, 4) vs gt (1, 3, 4, 2): sum d^2 = 0 + 1 + 1 + 4 = 6 -> 1 - 6*6/(4*15) = 0.4
    assert out['spearman'] == pytest.approx(0.4)
    # 5x5 confusion with O[0,0]=O[2,1]=O[2,3]=O[1,4]=1; gt counts r=(1,1,2,0,0), pred counts c=(1,1,0,1,1), N=4,
    # w=(i-j)^2/16. sum wO = (0 + 1 + 1 + 9)/16 = 44/64. sum_ij r_i c_j (i-j)^2 = 26 (i=0) + 14 (i=1) + 2*10 (i=2)
    # = 60, so sum wE = 60/(16*4) = 60/64 and kappa = 1 - 44/60.
    assert out['qwk'] == pytest.approx(1 - 44 / 60)


def test_metric_accuracy_from_value_and_items():
    metric = OrdinalMetric(items=('accuracy', 'off_by_one'), accuracy_from='value')
    metric.process({}, _samples())
    # round(pred) = 1, 2, 6, 9 vs gt 1, 4, 5, 3 -> equal once; |diff| 0, 2, 1, 6 -> within one twice
    assert metric.compute_metrics(metric.results) == {'accuracy': 25.0, 'off_by_one': 50.0}


def test_metric_rejects_unknown_items():
    with pytest.raises(ValueError, match='unknown OrdinalMetric items'):
        OrdinalMetric(items=('mae', 'rmse'))


def test_metric_through_mmengine_evaluator_with_datasamples():
    metric = METRICS.build(dict(type='OrdinalMetric', items=('mae', 'accuracy')))
    evaluator = Evaluator(metric)
    samples = []
    for p, g, pl, gl in zip(PRED_VALUE, GT_VALUE, PRED_LABEL, GT_LABEL):
        ds = DataSample().set_gt_label(gl).set_pred_label(pl)
        ds.set_field(g, 'gt_value')
        ds.set_field(torch.tensor(p), 'pred_value')
        samples.append(ds)
    evaluator.process(samples[:2])
    evaluator.process(samples[2:])
    assert evaluator.evaluate(4) == {'mae': pytest.approx(2.125), 'accuracy': pytest.approx(25.0)}


@pytest.mark.parametrize('ext', ['csv', 'parquet'])
def test_dump_round_trip(tmp_path, ext):
    out = tmp_path / f'preds.{ext}'
    metric = DumpOrdinalPredictions(str(out))
    samples = _samples()
    metric.process({}, samples[2:])  # out of order: the file is sorted by sample_idx
    metric.process({}, samples[:2])
    assert metric.compute_metrics(metric.results) == {}
    frame = load_predictions(str(out))
    assert list(frame.columns[:6]) == ['sample_idx', 'img_path', 'gt_value', 'gt_label', 'pred_value', 'pred_label']
    assert frame['sample_idx'].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(frame['pred_value'], PRED_VALUE)
    np.testing.assert_allclose(frame['gt_value'], GT_VALUE)
    assert frame['pred_label'].tolist() == PRED_LABEL and frame['gt_label'].tolist() == GT_LABEL
    assert frame['img_path'].tolist() == [f'img_{i}.png' for i in range(4)]
    np.testing.assert_allclose(frame[[f'pred_score_{k}' for k in range(5)]].to_numpy().argmax(1), PRED_LABEL)


def test_label_of_the_value_and_argmax_bin_kept_apart(tmp_path):
    """Samples as OrdinalHead.predict writes them: pred_label is the bin of pred_value, pred_bin_argmax the most
    probable bin. The metric's accuracy scores the arg-max bin; the dump writes both, with their probabilities."""
    scores = torch.tensor([[0.6, 0.4, 0, 0, 0], [0.1, 0.2, 0.5, 0.2, 0], [0, 0, 0.1, 0.3, 0.6], [0, 0, 0, 0.3, 0.7]])
    samples = [dict(s, pred_label=torch.tensor([int(b)]), pred_bin_argmax=torch.tensor([int(sc.argmax())]),
                    pred_score=sc) for s, b, sc in zip(_samples(), [0, 1, 3, 4], scores)]
    metric = OrdinalMetric(items=('accuracy',))
    metric.process({}, samples)
    # arg-max bins 0, 2, 4, 4 vs gt bins 0, 2, 2, 1: two right (the value bins 0, 1, 3, 4 would get one)
    assert metric.compute_metrics(metric.results) == {'accuracy': 50.0}
    dump = DumpOrdinalPredictions(str(tmp_path / 'preds.csv'))
    dump.process({}, samples)
    dump.compute_metrics(dump.results)
    frame = load_predictions(str(tmp_path / 'preds.csv'))
    assert frame['pred_label'].tolist() == [0, 1, 3, 4] and frame['pred_bin_argmax'].tolist() == [0, 2, 4, 4]
    np.testing.assert_allclose(frame['pred_probability'], [0.6, 0.2, 0.3, 0.7], atol=1e-6)
    np.testing.assert_allclose(frame['pred_bin_argmax_probability'], [0.6, 0.5, 0.6, 0.7], atol=1e-6)


def test_dump_refuses_pickle(tmp_path):
    with pytest.raises(ValueError, match='no pickle'):
        DumpOrdinalPredictions(str(tmp_path / 'preds.pkl'))
    path = tmp_path / 'results.pkl'
    path.write_bytes(b'\x80\x04N.')  # a pickle of None
    with pytest.raises(ValueError, match='trusted_pickle=True'):
        load_predictions(str(path))
    with pytest.raises(FileNotFoundError, match='nope.csv'):
        load_predictions(str(tmp_path / 'nope.csv'))


def test_task_bins_the_numbers_instead_of_the_labels():
    """With task='count' the classes come from the numbers: pred values 1, 2.5, 6, 9 -> bins 0, 1, 3, 4 and gt
    values 1, 4, 5, 3 -> bins 0, 2, 2, 1, whatever the labels say (here: rank labels of another task)."""
    metric = OrdinalMetric(items=('accuracy', 'off_by_one', 'mae_bin'), task='count')
    rank_labels = [1, 4, 6, 9]  # e.g. OrdinalCLIP's one class per count
    out = metric.calculate(PRED_VALUE, GT_VALUE, rank_labels, [1, 4, 5, 3])
    assert out['accuracy'] == pytest.approx(25.0)          # only sample 0 in the same bin
    assert out['off_by_one'] == pytest.approx(75.0)        # bin differences 0, 1, 1, 3
    assert out['mae_bin_2'] == pytest.approx((1.5 + 1.0) / 2)
    # a predicted number beyond the last edge is clamped into the last bin, below the first into the first
    out = metric.calculate([12.0, -3.0], [9.0, 0.0], [0, 0], [0, 0])
    assert out['accuracy'] == pytest.approx(100.0)


def _absolute_calibration():
    """Hand-set thresholds of the plain method: half-widths 0.5 (level 0.5) and 1.5 (level 0.9), range [0, 9]."""
    return Calibration(method='absolute', levels=(0.5, 0.9), quantiles={'absolute': {'0.5': 0.5, '0.9': 1.5}},
                       anchors=(0, 2, 4, 6, 8), value_range=(0, 9), scale_floor=0.1, task='count')


def test_metric_coverage_and_width_hand_values(tmp_path):
    # level 0.9: [0, 2.5] [1, 4] [4.5, 7.5] [7.5, 9] (clipped) hold 1, 4, 5 but not 3; widths 2.5, 3, 3, 1.5
    # level 0.5: [0.5, 1.5] [2, 3] [5.5, 6.5] [8.5, 9] hold only 1; widths 1, 1, 1, 0.5
    want = {'coverage@0.9': 75.0, 'width@0.9': 2.5, 'coverage@0.5': 25.0, 'width@0.5': 0.875}
    path = _absolute_calibration().save(str(tmp_path / 'm.pth.calibration.json'))
    metric = METRICS.build(dict(type='OrdinalMetric', items=('mae',), calibration=path))  # from a config
    evaluator = Evaluator(metric)
    evaluator.process(_samples()[:3])
    evaluator.process(_samples()[3:])
    assert evaluator.evaluate(4) == pytest.approx({'mae': 2.125, **want})
    plain = OrdinalMetric(items=('mae',), calibration=_absolute_calibration())
    with pytest.raises(ValueError, match='pred_score'):
        plain.calculate(PRED_VALUE, GT_VALUE, PRED_LABEL, GT_LABEL)
    with pytest.raises(KeyError, match="no 'scaled' calibration"):  # asked for a method it was not fitted for
        OrdinalMetric(calibration=_absolute_calibration(), interval_method='scaled')


def test_dump_writes_interval_columns(tmp_path):
    out = tmp_path / 'preds.csv'
    metric = DumpOrdinalPredictions(str(out), calibration=_absolute_calibration())
    metric.process({}, _samples())
    metric.compute_metrics(metric.results)
    frame = load_predictions(str(out))
    np.testing.assert_allclose(frame['pred_low_0.9'], [0, 1, 4.5, 7.5])
    np.testing.assert_allclose(frame['pred_high_0.9'], [2.5, 4, 7.5, 9])
    np.testing.assert_allclose(frame['pred_low_0.5'], [0.5, 2, 5.5, 8.5])
