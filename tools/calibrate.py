"""Split-conformal calibration of a trained checkpoint: prediction intervals with guaranteed coverage.

Runs the model on a held-out split (the config's val set by default), fits the thresholds of every interval method
(docs/intervals.md) for the asked coverage levels and writes them next to the checkpoint as
``<checkpoint>.calibration.json`` (split, size, date, config, checkpoint sha256, levels, method, thresholds).
``tools/test.py --out``, ``OrdinalMetric(calibration=...)`` and ``numclip_mm.inference.Predictor`` pick it up.

    python tools/calibrate.py CONFIG CHECKPOINT --coverage 0.9 0.8
    python tools/calibrate.py CONFIG CHECKPOINT --coverage 0.9 --preds val_preds.csv   # reuse a prediction file

The calibration split must not have been used for training or model selection if the guarantee is to hold
exactly: it rests on the calibration and future samples being exchangeable.
"""
import argparse
import os
import os.path as osp
import tempfile

from common import (
    add_common_args,
    build_runner,
    finish_args,
    load_config_file,
    run_cli,
    set_dataloader_defaults,
    set_work_dir,
)
from mmengine.config import Config
from mmengine.logging import print_log

from numclip_mm.conformal import (
    DEFAULT_METHOD,
    METHODS,
    add_interval_columns,
    coverage_and_width,
    file_digest,
    fit_calibration,
    level_key,
    score_columns,
    sidecar_path,
)
from numclip_mm.evaluation.dump import load_predictions
from numclip_mm.tasks import get_task


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Conformal calibration of a checkpoint (prediction intervals)')
    parser.add_argument('config', help='the config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='checkpoint file; the calibration is written next to it')
    parser.add_argument('--coverage', type=float, nargs='+', default=[0.9], help='coverage levels, e.g. 0.9 0.8')
    parser.add_argument('--split', default='val', help='the <split>_dataloader to calibrate on (default val)')
    parser.add_argument('--method', choices=METHODS, default=DEFAULT_METHOD,
                        help=f'the interval method used by default downstream (all are fitted; default '
                             f'{DEFAULT_METHOD})')
    parser.add_argument('--preds', help='calibrate from this prediction file (tools/test.py --out) instead of '
                                        'running the model')
    parser.add_argument('--save-preds', help='also keep the calibration split predictions (.csv/.parquet)')
    parser.add_argument('--out', help='calibration file (default <checkpoint>.calibration.json)')
    add_common_args(parser)
    return finish_args(parser.parse_args(argv))


def predict_split(cfg: Config, checkpoint: str, split: str, out_file: str):
    """Run the test loop of ``cfg`` on ``<split>_dataloader`` and return its prediction frame."""
    loader = f'{split}_dataloader'
    if cfg.get(loader, None) is None:
        raise KeyError(f'the config has no {loader}; choose --split among '
                       f'{[k[:-len("_dataloader")] for k in cfg if k.endswith("_dataloader") and cfg[k]]}')
    cfg.test_dataloader = cfg[loader]
    cfg.test_evaluator = dict(type='DumpOrdinalPredictions', out_file_path=out_file)
    cfg.load_from = checkpoint
    set_dataloader_defaults(cfg, ('test_dataloader',), no_pin_memory=False, persistent_workers=False)
    build_runner(cfg).test()  # the tools' runner: strict, weights-only checkpoint loading
    return load_predictions(out_file)


def model_task(cfg: Config):
    """The OrdinalTask of the config's head (what the bins and the value range are)."""
    task = cfg.model.get('head', {}).get('task', None)
    if task is None:
        raise KeyError('the config has no model.head.task; the intervals need the task\'s anchors and range')
    return get_task(task.to_dict() if hasattr(task, 'to_dict') else task)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint}')
    cfg = load_config_file(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    task = model_task(cfg)
    if args.split in ('train', 'test') and not args.preds:
        print_log(f'calibrating on the {args.split} split: coverage measured on that split later is not a held-out '
                  'estimate (train: optimistic scores; test: no test set left)', logger='current', level=30)
    if args.preds:
        frame = load_predictions(args.preds)
    else:
        set_work_dir(cfg, args)
        with tempfile.TemporaryDirectory() as tmp:
            out_file = args.save_preds or osp.join(tmp, f'{args.split}_preds.parquet')
            frame = predict_split(cfg, args.checkpoint, args.split, out_file)
    cols = score_columns(frame)
    if not cols:
        raise ValueError('the predictions carry no bin probabilities (pred_score_*): the model must write '
                         'pred_score')
    source = dict(split=args.split if not args.preds else f'predictions {args.preds}', config=args.config,
                  checkpoint=osp.basename(args.checkpoint), checkpoint_sha256=file_digest(args.checkpoint))
    calibration = fit_calibration(frame['pred_value'].to_numpy(float), frame[cols].to_numpy(float),
                                  frame['gt_value'].to_numpy(float), task, args.coverage, method=args.method,
                                  source=source)
    out = args.out or sidecar_path(args.checkpoint)
    if osp.dirname(out):
        os.makedirs(osp.dirname(out), exist_ok=True)
    calibration.save(out)
    n = calibration.source['num_samples']
    for method in METHODS:  # in-sample check of every method: coverage >= level by construction
        add_interval_columns(frame, calibration, method=method)
        for level in calibration.levels:
            key = level_key(level)
            cov, width = coverage_and_width(frame[f'pred_low_{key}'], frame[f'pred_high_{key}'],
                                            frame['gt_value'])
            print_log(f'{method:>8} @{key}: q={calibration.threshold(level, method):.4g}  calibration-set '
                      f'coverage {100 * cov:.1f}%  mean width {width:.3f}', logger='current')
    print_log(f'calibrated {calibration.task!r} on {n} samples of {source["split"]} (default method '
              f'{calibration.method}) -> {out}', logger='current')
    print(out)
    return out


if __name__ == '__main__':
    run_cli(main)
