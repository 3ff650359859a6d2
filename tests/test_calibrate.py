"""Prediction intervals end to end: train a tiny model, tools/calibrate.py writes the sidecar, tools/test.py --out
and the Predictor give the same interval columns, and a missing or stale calibration fails clearly."""
import json

import numpy as np
import pandas as pd
import pytest
from test_tools import ROOT, run_tool

from numclip_mm.conformal import Calibration, file_digest, fit_calibration, sidecar_path
from numclip_mm.datasets.demo import generate_count_images
from numclip_mm.inference import Predictor

TINY_DEMO = """_base_ = [{base!r}]
model = dict(clip=dict(model_name='numclip-tiny', pretrained=None))
train_dataloader = dict(dataset=dict(num_samples=64, image_size=32))
val_dataloader = dict(dataset=dict(num_samples=40, image_size=32))
test_dataloader = dict(dataset=dict(num_samples=24, image_size=32))
train_cfg = dict(max_epochs=1, val_interval=1)
"""


@pytest.fixture(scope='module')
def calibrated(tmp_path_factory):
    root = tmp_path_factory.mktemp('calibrate')
    cfg = root / 'tiny_demo.py'
    cfg.write_text(TINY_DEMO.format(base=str(ROOT / 'configs' / 'numclip_demo.py')))
    run_tool('tools/train.py', cfg, '--work-dir', root / 'work')
    ckpt = root / 'work' / 'epoch_1.pth'
    proc = run_tool('tools/calibrate.py', cfg, ckpt, '--coverage', 0.9, 0.5, '--work-dir', root / 'cal')
    return dict(root=root, cfg=str(cfg), ckpt=str(ckpt), log=proc.stdout + proc.stderr)


def test_calibrate_writes_the_sidecar(calibrated):
    path = sidecar_path(calibrated['ckpt'])
    assert path in calibrated['log']
    raw = json.load(open(path))
    assert raw['levels'] == [0.9, 0.5] and raw['method'] == 'scaled' and raw['task'] == 'count'
    assert raw['source']['split'] == 'val' and raw['source']['num_samples'] == 40
    assert raw['source']['checkpoint_sha256'] == file_digest(calibrated['ckpt'])
    assert set(raw['quantiles']) == {'absolute', 'scaled', 'cqr'}
    cal = Calibration.load(path)
    assert cal.threshold(0.5) <= cal.threshold(0.9) < np.inf  # 40 samples: rank ceil(41 * 0.9) = 37 <= 40


def test_test_tool_columns_and_predictor_agree(calibrated, tmp_path):
    out = tmp_path / 'preds.csv'
    proc = run_tool('tools/test.py', calibrated['cfg'], calibrated['ckpt'], '--work-dir', tmp_path, '--out', out)
    assert 'coverage@0.9' in proc.stdout + proc.stderr and 'width@0.5' in proc.stdout + proc.stderr
    table = pd.read_csv(out)
    for key in ('0.9', '0.5'):
        low, high = table[f'pred_low_{key}'], table[f'pred_high_{key}']
        assert (low <= table['pred_value'].clip(0, 9)).all() and (table['pred_value'].clip(0, 9) <= high).all()
        assert low.between(0, 9).all() and high.between(0, 9).all()
    assert ((table['pred_high_0.9'] - table['pred_low_0.9']) >= (table['pred_high_0.5'] - table['pred_low_0.5'])).all()

    predictor = Predictor(calibrated['cfg'], calibrated['ckpt'])  # finds the sidecar next to the checkpoint
    images, _ = generate_count_images(5, 32, split='test')
    cols = predictor.predict(list(images), intervals=[0.9])
    assert {'low_0.9', 'high_0.9'} <= set(cols) and 'low_0.5' not in cols
    np.testing.assert_allclose(cols['value'], table['pred_value'][:5], atol=1e-4)
    np.testing.assert_allclose(cols['low_0.9'], table['pred_low_0.9'][:5], atol=1e-4)
    np.testing.assert_allclose(cols['high_0.9'], table['pred_high_0.9'][:5], atol=1e-4)
    assert set(predictor.predict(list(images[:2]))) == {'value', 'value_raw', 'label', 'label_index', 'probability',
                                                        'bin_argmax', 'bin_argmax_index', 'bin_argmax_probability'}

    # --preds: calibrate from a prediction file without running the model; same thresholds as fitting it directly
    cal_file = tmp_path / 'from_preds.json'
    run_tool('tools/calibrate.py', calibrated['cfg'], calibrated['ckpt'], '--coverage', 0.8, '--preds', out,
             '--out', cal_file)
    cols = [f'pred_score_{k}' for k in range(5)]
    want = fit_calibration(table['pred_value'], table[cols], table['gt_value'], 'count', [0.8])
    got = Calibration.load(str(cal_file))
    assert set(got.quantiles) == set(want.quantiles) and got.source['split'].startswith('predictions')
    for method, table_q in want.quantiles.items():
        assert got.quantiles[method] == pytest.approx(table_q)
    with pytest.raises(KeyError, match='--coverage 0.8'):
        predictor.predict(list(images[:1]), intervals=[0.8])


def test_predictor_without_or_with_a_stale_calibration(calibrated, tmp_path):
    import shutil

    import torch

    from numclip_mm.utils import load_weights_only
    bare = tmp_path / 'bare.pth'
    shutil.copy(calibrated['ckpt'], bare)
    predictor = Predictor(calibrated['cfg'], str(bare))
    assert predictor.calibration is None
    with pytest.raises(ValueError, match='no conformal calibration: run tools/calibrate.py'):
        predictor.check_intervals([0.9])
    # a sidecar copied next to another checkpoint is refused: its thresholds belong to other weights
    state = load_weights_only(str(bare))
    next(iter(state['state_dict'].values())).add_(1.0)
    torch.save(state, bare)
    shutil.copy(sidecar_path(calibrated['ckpt']), sidecar_path(str(bare)))
    with pytest.raises(ValueError, match='another checkpoint'):
        Predictor(calibrated['cfg'], str(bare))
