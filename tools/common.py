"""Argument handling shared by tools/train.py and tools/test.py (mmpretrain's flags and behaviour)."""
import argparse
import os
import os.path as osp
import sys
from copy import deepcopy

import torch
from mmengine.config import ConfigDict, DictAction
from mmengine.registry import RUNNERS

import numclip_mm.register  # noqa: F401  (registration; also makes torchvision importable first)
from numclip_mm.engine import StrictLoadRunner, destroy_distributed, init_cpu_distributed, resolve_dist_backend
from numclip_mm.utils import CheckpointLoadError
from numclip_mm.utils.config_file import ConfigLoadError, load_config_file  # noqa: F401  (the tools' config loader)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='the dir to save logs, checkpoints and metrics')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--no-pin-memory', action='store_true', help='disable pin_memory in dataloaders')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy pairs, e.g. model.clip.pretrained=ViT-B-16.pt')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    # torch.distributed launchers pass --local-rank (torch >= 2.0) or --local_rank
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def finish_args(args):
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def set_work_dir(cfg, args) -> None:
    """CLI > config > ./work_dirs/<config name>, as in mmpretrain."""
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])


def set_dataloader_defaults(cfg, fields, no_pin_memory: bool, persistent_workers: bool) -> None:
    """mmpretrain's dataloader defaults, except that ``persistent_workers`` is only set where workers exist
    (PyTorch rejects it with ``num_workers=0``) and memory is pinned only when there is a GPU to pin for."""
    for field in fields:
        if cfg.get(field, None) is None:
            continue
        loader = ConfigDict(pin_memory=torch.cuda.is_available(), collate_fn=dict(type='default_collate'))
        loader.update(deepcopy(cfg[field]))
        if persistent_workers:
            loader.setdefault('persistent_workers', loader.get('num_workers', 0) > 0)
        if no_pin_memory:
            loader['pin_memory'] = False
        cfg[field] = loader
    drop_persistent_workers_without_workers(cfg, fields)


def drop_persistent_workers_without_workers(cfg, fields) -> None:
    """``persistent_workers=False`` wherever ``num_workers`` is 0 (PyTorch rejects the pair); run again after
    ``--cfg-options`` (``test_dataloader.num_workers=0`` on a config that sets persistent workers)."""
    for field in fields:
        loader = cfg.get(field, None)
        if loader is not None and loader.get('num_workers', 0) == 0 and loader.get('persistent_workers'):
            loader['persistent_workers'] = False


def build_runner(cfg):
    """Resolve the device-dependent settings, start CPU DDP where needed, and build the runner.

    Configs without ``runner_type`` (mmpretrain's own) get :class:`StrictLoadRunner` too, so every checkpoint the
    tools load is read weights-only and strictly.
    """
    resolve_dist_backend(cfg)
    init_cpu_distributed(cfg)
    return StrictLoadRunner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


def run_cli(main) -> None:
    """Run a tool's ``main``; a config that cannot be loaded (``load_config_file``: syntax error, an exception
    while it runs) ends the process with exit code 2, a checkpoint that cannot be used (missing, refused, not
    fitting) with exit code 1, each with the one-line reason on stderr instead of a traceback. A run that finished
    destroys its process group (distributed runs) before the interpreter exits: :func:`destroy_distributed`."""
    try:
        main()
    except ConfigLoadError as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(2)
    except (CheckpointLoadError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(1)
    destroy_distributed()
