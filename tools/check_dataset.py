"""List the missing and unreadable images of a config's data sets before training starts.

    python tools/check_dataset.py configs/numclip_morph.py [--split train val test] [--cfg-options k=v ...]

Every image is read and fully decoded with the training decoder (the pipeline's ``LoadOrdinalImage`` settings, so
its ``max_pixels`` applies), annotation files are parsed with the same errors as training (file and line named).
Exit status 0 when every image is readable, 1 when some are not (each listed), 2 when a data set cannot be built.
The datasets run the same check themselves when they are small (``OrdinalDataset(check_images='auto')``).
"""
import argparse
import json
import sys

from mmengine.config import DictAction

from numclip_mm.tasks import apply_config_task
from numclip_mm.utils.config_file import ConfigLoadError, load_config_file


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Check that every image of a config\'s data sets can be read')
    parser.add_argument('config', help='config file')
    parser.add_argument('--split', nargs='+', default=['train', 'val', 'test'], choices=['train', 'val', 'test'],
                        help='the dataloaders to check (default: all three; a split the config lacks is skipped)')
    parser.add_argument('--threads', type=int, default=4, help='images read at once')
    parser.add_argument('--json', help='also write the findings to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    return parser.parse_args(argv)


def check_split(cfg, split: str, threads: int) -> dict:
    """Build one split's dataset without its own check, then check every image; returns a summary dict."""
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import DATASETS

    import numclip_mm.register  # noqa: F401  (registration)
    from numclip_mm.datasets import LoadOrdinalImage, OrdinalDataset
    from numclip_mm.datasets.image_check import find_unreadable_images

    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    dataset_cfg = cfg[f'{split}_dataloader']['dataset'].copy()
    dataset_type = DATASETS.get(dataset_cfg['type']) if isinstance(dataset_cfg['type'], str) else dataset_cfg['type']
    if isinstance(dataset_type, type) and issubclass(dataset_type, OrdinalDataset):
        dataset_cfg['check_images'] = False  # this tool checks them all, with progress
    dataset = DATASETS.build(dataset_cfg)
    loader = next((t for t in getattr(dataset.pipeline, 'transforms', []) if isinstance(t, LoadOrdinalImage)), None)
    kwargs = {} if loader is None else dict(max_pixels=loader.max_pixels, backend=loader.imdecode_backend)
    infos = [dataset.get_data_info(i) for i in range(len(dataset))]

    def progress(done, total):
        print(f'\r{split}: checked {done}/{total} images', end='' if done < total else '\n', file=sys.stderr,
              flush=True)
    bad = find_unreadable_images(infos, num_threads=threads, progress=progress, **kwargs)
    return dict(split=split, samples=len(infos), unreadable=[dict(index=i, reason=r) for i, r in bad])


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config_file(args.config)
    except ConfigLoadError as err:  # the file and the line, not a traceback
        print(f'error: {err}', file=sys.stderr)
        return 2
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    apply_config_task(cfg)
    findings, status = [], 0
    for split in args.split:
        if cfg.get(f'{split}_dataloader') is None:
            continue
        try:
            result = check_split(cfg, split, args.threads)
        except (ValueError, KeyError, FileNotFoundError) as err:  # annotation errors name the file and the line
            print(f'{split}: cannot build the data set: {err}', file=sys.stderr)
            findings.append(dict(split=split, error=str(err)))
            status = 2
            continue
        findings.append(result)
        for item in result['unreadable']:
            print(f"{split}: {item['reason']}")
        print(f"{split}: {len(result['unreadable'])} of {result['samples']} images missing or unreadable")
        if result['unreadable'] and status == 0:
            status = 1
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(findings, f, indent=1)
    return status


if __name__ == '__main__':
    sys.exit(main())
