"""Split-conformal intervals: the finite-sample quantile rule by hand, ties, tiny sets, the three methods, the
sidecar round trip and the coverage guarantee on simulated exchangeable data."""
import json

import numpy as np
import pytest

from numclip_mm.conformal import (
    Calibration,
    add_interval_columns,
    bin_quantile,
    bin_spread,
    conformal_quantile,
    coverage_and_width,
    fit_calibration,
    get_calibration,
    interval_bounds,
    nonconformity,
    sidecar_path,
)
from numclip_mm.tasks import get_task


def test_quantile_rule_by_hand():
    scores = [3.0, 1.0, 2.0, 5.0, 4.0]  # n = 5
    # ranks ceil(6 * level): 0.5 -> 3, 0.8 -> ceil(4.8) = 5, 0.9 -> ceil(5.4) = 6 > n -> inf
    np.testing.assert_array_equal(conformal_quantile(scores, [0.5, 0.8, 0.9]), [3.0, 5.0, np.inf])
    assert conformal_quantile(scores, 0.5).shape == ()


def test_quantile_rule_tiny_sets_finite_sample_correction():
    # 0.9 needs n >= 9: with n = 9 the rank is ceil(10 * 0.9) = 9 (the largest score), with n = 8 it is 9 > 8
    assert conformal_quantile(np.arange(9.0), 0.9) == 8.0
    assert conformal_quantile(np.arange(8.0), 0.9) == np.inf
    assert conformal_quantile([7.0], 0.5) == 7.0          # ceil(2 * 0.5) = 1
    assert conformal_quantile([7.0], 0.51) == np.inf      # ceil(2 * 0.51) = 2 > 1
    assert conformal_quantile([], 0.1) == np.inf
    # (n + 1) * level = 16.000000000000004 in floating point for n = 19, level = 0.8: the rank is 16, not 17
    assert conformal_quantile(np.arange(19.0), 0.8) == 15.0


def test_quantile_rule_ties():
    scores = [2.0, 1.0, 2.0, 3.0, 2.0]  # sorted 1, 2, 2, 2, 3; ranks ceil(6 * level) = 1, 3, 4, 5
    np.testing.assert_array_equal(conformal_quantile(scores, [0.15, 0.5, 0.65, 0.8]), [1.0, 2.0, 2.0, 3.0])
    # closed intervals: with q = 2 four of five calibration scores are covered (more than the level 0.5 asks)
    assert (np.asarray(scores) <= conformal_quantile(scores, 0.5)).mean() == 0.8


def test_quantile_rule_rejects_bad_input():
    with pytest.raises(ValueError, match='levels'):
        conformal_quantile([1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match='levels'):
        conformal_quantile([1.0, 2.0], [0.5, 0.0])
    with pytest.raises(ValueError, match='NaN'):
        conformal_quantile([1.0, np.nan], 0.5)


def test_guarantee_on_exchangeable_scores():
    """Marginal coverage is in [level, level + 1/(n+1)] for continuous scores: n = 19, level 0.8 -> 16/20."""
    rng = np.random.default_rng(0)
    draws = rng.exponential(size=(4000, 20))
    sorted_cal = np.sort(draws[:, :19], axis=1)
    q = conformal_quantile(draws[0, :19], 0.8)  # rank 16 of the first draw agrees with the vectorised one below
    assert q == sorted_cal[0, 15]
    covered = draws[:, 19] <= sorted_cal[:, 15]
    assert abs(covered.mean() - 0.8) < 0.02


def test_bin_spread_and_quantile_by_hand():
    np.testing.assert_allclose(bin_spread([[0.5, 0.5], [1.0, 0.0]], [0.0, 2.0]), [1.0, 0.0])
    probs = np.array([[0.2, 0.3, 0.5]])  # mid-CDF at anchors 0, 1, 2: 0.1, 0.35, 0.75
    anchors = [0.0, 1.0, 2.0]
    for tau, want in [(0.05, 0.0), (0.1, 0.0), (0.225, 0.5), (0.55, 1.5), (0.9, 2.0)]:
        np.testing.assert_allclose(bin_quantile(probs, anchors, tau), [want])
    # a per-row tau; a one-hot row spreads its mass linearly to the neighbouring anchors (mid-CDF 0, 0.5, 1)
    np.testing.assert_allclose(bin_quantile([[0.2, 0.3, 0.5], [0, 1, 0]], anchors, [0.55, 0.05]), [1.5, 0.1])


def test_scores_and_intervals_by_hand():
    anchors, rng_ = [0.0, 2.0], (0.0, 3.0)
    p, probs, y = np.array([0.5, 2.5]), np.array([[0.5, 0.5], [0.0, 1.0]]), np.array([1.5, 2.0])
    np.testing.assert_allclose(nonconformity('absolute', p, probs, y, anchors), [1.0, 0.5])
    np.testing.assert_allclose(nonconformity('scaled', p, probs, y, anchors, scale_floor=0.5), [1 / 1.5, 1.0])
    # cqr at 0.5: quantiles 0.25 / 0.75 are (0, 2) for row 0 (mid-CDF 0.25, 0.75) and (1, 2) for row 1 (0, 0.5)
    np.testing.assert_allclose(nonconformity('cqr', p, probs, y, anchors, level=0.5), [-0.5, 0.0])
    low, high = interval_bounds('absolute', 1.0, p, probs, anchors, rng_)
    np.testing.assert_allclose(low, [0.0, 1.5]), np.testing.assert_allclose(high, [1.5, 3.0])  # clipped to range
    low, high = interval_bounds('scaled', 1.0, p, probs, anchors, rng_, scale_floor=0.5)
    np.testing.assert_allclose(low, [0.0, 2.0]), np.testing.assert_allclose(high, [2.0, 3.0])
    low, high = interval_bounds('cqr', -0.5, p, probs, anchors, rng_, level=0.5)
    np.testing.assert_allclose(low, [0.5, 1.5]), np.testing.assert_allclose(high, [1.5, 1.5])
    low, high = interval_bounds('cqr', -1.5, p, probs, anchors, rng_, level=0.5)  # crossed bounds -> their centre
    np.testing.assert_allclose(low, [1.0, 1.5]), np.testing.assert_allclose(high, [1.0, 1.5])
    low, high = interval_bounds('absolute', np.inf, p, probs, anchors, rng_)
    np.testing.assert_allclose(low, [0.0, 0.0]), np.testing.assert_allclose(high, [3.0, 3.0])
    with pytest.raises(ValueError, match='unknown interval method'):
        nonconformity('bogus', p, probs, y, anchors)


def _fake_predictions(n, seed):
    """Count-task predictions whose error grows with the spread of their bin distribution (heteroscedastic)."""
    rng = np.random.default_rng(seed)
    task = get_task('count')
    y = rng.integers(0, 10, n).astype(float)
    sharp = rng.uniform(0.5, 4.0, n)  # bin distribution concentration
    logits = -sharp[:, None] * (np.asarray(task.anchors)[None] - y[:, None]) ** 2 / 4
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    p = y + rng.normal(size=n) * bin_spread(probs, task.anchors)
    return p, probs, y


@pytest.mark.parametrize('method', ['absolute', 'scaled', 'cqr'])
def test_fit_and_cover_held_out(method):
    task = get_task('count')
    cal = fit_calibration(*_fake_predictions(2000, 0), task, [0.8, 0.9], method=method, source=dict(split='val'))
    p, probs, y = _fake_predictions(4000, 1)
    for key, (low, high) in cal.intervals(p, probs).items():
        cov, width = coverage_and_width(low, high, y)
        # at least the level (minus sampling noise); cqr's scores tie a lot on these integer truths, which only
        # makes it conservative, so only the lower side is checked for it
        assert cov > float(key) - 0.03 and (method == 'cqr' or cov < float(key) + 0.03), (method, key, cov)
        assert ((low >= 0) & (high <= 9) & (low <= high)).all() and 0 < width < 9
    assert cal.source['num_samples'] == 2000 and cal.source['split'] == 'val'


def test_adaptive_is_narrower_where_errors_follow_the_spread():
    cal = fit_calibration(*_fake_predictions(2000, 0), 'count', [0.9])
    p, probs, y = _fake_predictions(4000, 1)
    widths = {m: coverage_and_width(*cal.intervals(p, probs, method=m)['0.9'], y)[1] for m in ('absolute', 'scaled')}
    assert widths['scaled'] < widths['absolute']


def test_calibration_sidecar_round_trip_and_errors(tmp_path):
    cal = fit_calibration(*_fake_predictions(5, 0), 'count', [0.5, 0.9])  # n = 5: 0.9 has no finite threshold
    assert cal.threshold(0.9) == np.inf
    path = cal.save(sidecar_path(str(tmp_path / 'epoch_1.pth')))
    assert path.endswith('epoch_1.pth.calibration.json')
    raw = json.load(open(path))
    assert raw['quantiles']['scaled']['0.9'] is None and raw['value_range'] == [0.0, 9.0]  # strict JSON, no inf
    back = get_calibration(path)
    assert back.quantiles == cal.quantiles and back.levels == (0.5, 0.9) and back.source == cal.source
    low, high = back.intervals(*_fake_predictions(3, 2)[:2], levels=[0.9])['0.9']
    np.testing.assert_array_equal(low, 0.0), np.testing.assert_array_equal(high, 9.0)  # the whole range
    with pytest.raises(KeyError, match='--coverage 0.8'):
        back.threshold(0.8)
    (tmp_path / 'bad.json').write_text('{"method": "scaled"}')
    with pytest.raises(ValueError, match='bad.json'):
        Calibration.load(str(tmp_path / 'bad.json'))
    with pytest.raises(FileNotFoundError, match='tools/calibrate.py'):
        Calibration.load(str(tmp_path / 'none.json'))


def test_add_interval_columns_to_a_prediction_frame():
    import pandas as pd
    p, probs, y = _fake_predictions(6, 3)
    cal = fit_calibration(*_fake_predictions(200, 0), 'count', [0.8, 0.9])
    frame = pd.DataFrame({'pred_value': p, 'gt_value': y, **{f'pred_score_{k}': probs[:, k] for k in range(5)}})
    add_interval_columns(frame, cal)
    low, high = cal.intervals(p, probs)['0.9']
    np.testing.assert_allclose(frame['pred_low_0.9'], low), np.testing.assert_allclose(frame['pred_high_0.9'], high)
    assert (frame['pred_high_0.9'] - frame['pred_low_0.9'] >= frame['pred_high_0.8'] - frame['pred_low_0.8']).all()
    with pytest.raises(ValueError, match='pred_score'):
        add_interval_columns(frame.drop(columns=['pred_score_4']), cal)
