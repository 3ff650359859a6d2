"""Test (and evaluate) a model, like mmpretrain's tools/test.py.

``checkpoint`` may be omitted to evaluate the weights the config itself builds (zero-shot CLIP baselines).
``--out`` ending in ``.csv``/``.parquet`` writes one row of predictions per sample (for tools/analysis);
``.pkl`` dumps the DataSamples with mmengine's ``DumpResults`` as mmpretrain does.
With a conformal calibration (``<checkpoint>.calibration.json`` from tools/calibrate.py, or ``--calibration``) the
prediction file gets ``pred_low_<level>``/``pred_high_<level>`` columns and OrdinalMetric reports
``coverage@<level>``/``width@<level>`` (docs/intervals.md).

The checkpoint is loaded weights-only and strictly (numclip_mm.engine.StrictLoadRunner): a checkpoint of another
config ends the run with exit code 1 and an error naming the file and the first missing/unexpected keys.
"""
import argparse
import os.path as osp
from copy import deepcopy

from common import (
    add_common_args,
    build_runner,
    drop_persistent_workers_without_workers,
    finish_args,
    load_config_file,
    run_cli,
    set_dataloader_defaults,
    set_work_dir,
)
from mmengine.config import ConfigDict
from mmengine.evaluator import DumpResults
from mmengine.logging import print_log

from numclip_mm.conformal import check_checkpoint, find_calibration, get_calibration
from numclip_mm.evaluation import DumpOrdinalPredictions, OrdinalMetric
from numclip_mm.evaluation.dump import TABLE_FORMATS

PICKLE_FORMATS = ('.pkl', '.pickle')
METRICS_FORMATS = ('.json', '.yaml', '.yml') + PICKLE_FORMATS  # what mmengine.dump writes


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint file (omit for zero-shot configs)')
    parser.add_argument('--out', help='write per-sample predictions (.csv/.parquet/.pq) or DataSamples (.pkl)')
    parser.add_argument('--out-item', choices=['metrics', 'pred'],
                        help='with a .pkl --out: dump metrics or predictions (default predictions)')
    parser.add_argument('--show-dir', help='save visualised predictions to this directory')
    parser.add_argument('--show', action='store_true', help='display predictions in a window')
    parser.add_argument('--interval', type=int, default=1, help='visualise every N-th sample')
    parser.add_argument('--wait-time', type=float, default=2, help='display time of every window (s)')
    parser.add_argument('--tta', action='store_true', help='flip test-time augmentation')
    parser.add_argument('--calibration', help='conformal calibration file (default: <checkpoint>.calibration.json '
                                              'when it exists)')
    add_common_args(parser)
    args = parser.parse_args()
    suffix = osp.splitext(args.out or '')[1].lower()
    if args.out and args.out_item == 'metrics' and suffix not in METRICS_FORMATS:
        parser.error(f'--out {args.out} --out-item metrics: use a {", ".join(METRICS_FORMATS)} file name')
    if args.out and args.out_item != 'metrics' and suffix not in TABLE_FORMATS + PICKLE_FORMATS:
        parser.error(f'--out {args.out}: use a table ({", ".join(TABLE_FORMATS)}) or a pickle '
                     f'({", ".join(PICKLE_FORMATS)}) file name')
    return finish_args(args)


def merge_args(cfg, args):
    cfg.launcher = args.launcher
    set_work_dir(cfg, args)
    cfg.load_from = args.checkpoint
    if args.checkpoint is None:
        print_log('no checkpoint given: evaluating the weights the config builds', logger='current')
    if args.amp:
        cfg.test_cfg.fp16 = True
    if args.show or args.show_dir is not None:
        if 'visualization' not in cfg.default_hooks:
            raise ValueError('--show/--show-dir need default_hooks.visualization = dict(type="VisualizationHook")')
        cfg.default_hooks.visualization.update(enable=True, show=args.show, wait_time=args.wait_time,
                                               out_dir=args.show_dir, interval=args.interval)
    if args.tta:
        cfg.tta_model = cfg.get('tta_model', dict(type='mmpretrain.AverageClsScoreTTA'))
        if 'tta_pipeline' not in cfg:
            test_pipeline = cfg.test_dataloader.dataset.pipeline
            cfg.tta_pipeline = deepcopy(test_pipeline)
            cfg.tta_pipeline[-1] = dict(type='TestTimeAug', transforms=[
                [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)], [test_pipeline[-1]]])
        cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    set_dataloader_defaults(cfg, ('test_dataloader',), args.no_pin_memory, persistent_workers=False)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
        drop_persistent_workers_without_workers(cfg, ('test_dataloader',))
    return cfg


def main():
    args = parse_args()
    cfg = merge_args(load_config_file(args.config), args)
    runner = build_runner(cfg)
    calibration = get_calibration(args.calibration or find_calibration(args.checkpoint))
    if calibration is not None and args.calibration is None:
        check_checkpoint(calibration, args.checkpoint)  # a sidecar left next to other weights would mislead
    if calibration is not None:  # intervals: coverage/width in the metrics, low/high columns in --out
        print_log(f'conformal calibration: levels {list(calibration.levels)}, method {calibration.method}',
                  logger='current')
        for metric in runner.test_evaluator.metrics:
            if isinstance(metric, OrdinalMetric) and metric.calibration is None:
                metric.calibration = calibration
    if args.out:
        if osp.splitext(args.out)[1].lower() in TABLE_FORMATS:
            runner.test_evaluator.metrics.append(DumpOrdinalPredictions(out_file_path=args.out,
                                                                        calibration=calibration))
        elif args.out_item in (None, 'pred'):
            runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    metrics = runner.test()
    if args.out and args.out_item == 'metrics':
        import mmengine
        mmengine.dump(metrics, args.out)


if __name__ == '__main__':
    run_cli(main)
