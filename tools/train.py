"""Train a model from an mmpretrain-style config (NumCLIP's or mmpretrain's own), like mmpretrain's tools/train.py."""
import argparse

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

from numclip_mm.engine import fall_back_from_amp


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint, or (no value) from the latest in the work dir')
    parser.add_argument('--no-validate', action='store_true', help='do not evaluate during training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by the actual over the base batch size')
    parser.add_argument('--no-persistent-workers', action='store_true',
                        help='disable persistent_workers in dataloaders')
    parser.add_argument('--partial-load', action='store_true',
                        help='let load_from/--resume load a checkpoint that fits the model only partly (fine-tuning '
                             'from another task); without it a mismatch is an error')
    add_common_args(parser)
    return finish_args(parser.parse_args())


def merge_args(cfg, args):
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.launcher = args.launcher
    set_work_dir(cfg, args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    if args.partial_load:
        cfg.load_strict = False
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg:
            raise ValueError('--auto-scale-lr needs auto_scale_lr = dict(base_batch_size=...) in the config')
        cfg.auto_scale_lr.enable = True
    set_dataloader_defaults(cfg, ('train_dataloader', 'val_dataloader', 'test_dataloader'), args.no_pin_memory,
                            persistent_workers=not args.no_persistent_workers)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
        drop_persistent_workers_without_workers(cfg, ('train_dataloader', 'val_dataloader', 'test_dataloader'))
    fall_back_from_amp(cfg)  # AMP configs on a CPU-only machine: fp32 OptimWrapper, with a notice
    return cfg


def main():
    args = parse_args()
    cfg = merge_args(load_config_file(args.config), args)
    build_runner(cfg).train()


if __name__ == '__main__':
    run_cli(main)
