"""Score a Parquet image catalog with a trained NumCLIP model on Ray.

Local run (starts a private Ray instance); three equivalent forms::

    numclip-score --config CFG --checkpoint CKPT --input catalog/ --output scored/
    numclip-score --model CFG1 CKPT1 --model CFG2 CKPT2 age_ --input catalog/ --output scored/   # one pass, 2 models
    python -m numclip_mm.batch.score ...
    python batch/score.py ...            # what `ray submit cluster.yaml batch/score.py -- ...` runs

On a running cluster: ``ray job submit`` or ``ray submit`` (see docs/batch_scoring.md).

Every input column is kept and ``{prefix}value``, ``{prefix}label``, ``{prefix}probability`` and ``{prefix}error``
(null on success) are added per model; one output file per input file, same relative path, same row order. Files whose complete
output exists are skipped (re-run a killed job to continue), unless ``--overwrite``.
Exit status: 0 done, 2 bad arguments/inputs (nothing started), 1 failure while scoring.
"""
import argparse
import json
import logging
import os
import sys

from numclip_mm.batch import catalog
from numclip_mm.batch.decode import DEFAULT_MAX_PIXELS
from numclip_mm.batch.pipeline import ModelSpec, ScoreOptions, ScoringFailed, prepare, run


def _size(text: str) -> int:
    """'1000', '64KB', '10MiB', '2G' -> bytes."""
    units = {'': 1, 'b': 1, 'k': 1000, 'kb': 1000, 'kib': 1024, 'm': 1000 ** 2, 'mb': 1000 ** 2, 'mib': 1024 ** 2,
             'g': 1000 ** 3, 'gb': 1000 ** 3, 'gib': 1024 ** 3}
    t = text.strip().lower()
    num = t.rstrip('abgikm')
    unit = t[len(num):]
    if unit not in units or not num:
        raise argparse.ArgumentTypeError(f'not a size: {text!r}')
    return int(float(num) * units[unit])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='numclip-score', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=None, help='model config the checkpoint was trained with (one model)')
    p.add_argument('--checkpoint', default=None, help='Runner checkpoint (.pth), local path or URI')
    p.add_argument('--zero-shot', action='store_true',
                   help='no checkpoint: score with the config\'s pretrained CLIP (refused when it has none)')
    p.add_argument('--model', nargs='+', action='append', default=[], metavar=('CONFIG', 'CHECKPOINT [PREFIX]'),
                   help='a model of a several-model pass: config, checkpoint and an optional column prefix '
                        '(default "<task name>_"); repeat it per model. Each image is read and decoded once and '
                        'goes through every model; each model adds its own columns. Replaces --config/--checkpoint')
    p.add_argument('--input', required=True,
                   help='a Parquet file, a folder (walked recursively: Hive partitions such as year=2020/ keep their '
                        'layout in the output), or a glob (local or fsspec URI)')
    p.add_argument('--output', required=True, help='output folder: one Parquet file per input file')
    src = p.add_mutually_exclusive_group()
    src.add_argument('--image-column', default=None,
                     help='column of encoded image bytes (binary, large_binary, binary_view) or a Hugging Face '
                          'Image() struct<bytes, path> (default: chosen from the schema when unambiguous)')
    src.add_argument('--path-column', default=None, help='column of image paths or URIs, read with fsspec')
    p.add_argument('--path-root', default=None,
                   help='folder that relative paths in --path-column are resolved against (default: current dir)')
    p.add_argument('--prefix', default=None, help='prefix of the new columns (default: "<task name>_")')
    p.add_argument('--keep-raw-value', action='store_true',
                   help='also write {prefix}value_raw, the value before clamping to the task\'s range')
    p.add_argument('--interval', type=float, nargs='+', default=(), metavar='LEVEL',
                   help='add conformal prediction intervals at these coverage levels, e.g. 0.9: columns '
                        '{prefix}low_<level>/{prefix}high_<level>; needs the checkpoint\'s calibration sidecar '
                        '(tools/calibrate.py; docs/intervals.md)')
    p.add_argument('--embedding', action='store_true',
                   help='also write {prefix}embedding: the L2-normalised image embedding the head sees (fp16 list), '
                        'for dedup and search; one column per model')
    p.add_argument('--batch-size', type=int, default=None, help='default: 64 on CPU, 256 per GPU actor')
    p.add_argument('--num-actors', type=int, default=1, help='inference actors (model replicas)')
    p.add_argument('--num-gpus-per-actor', type=float, default=0)
    p.add_argument('--precision', choices=['fp32', 'fp16', 'bf16'], default=None,
                   help='inference precision (autocast); default bf16 (fp16 on older GPUs) on CUDA, fp32 on CPU')
    p.add_argument('--cpus-per-actor', type=float, default=1)
    p.add_argument('--cpus-per-decode-task', type=float, default=1)
    p.add_argument('--decode-in', choices=['actor', 'tasks'], default=None,
                   help='decode images inside the inference actors (default on CPU) or in separate CPU tasks '
                        '(default with GPUs)')
    p.add_argument('--torch-threads', type=int, default=None, help='torch threads per actor (default: Ray\'s)')
    p.add_argument('--max-image-bytes', type=_size, default=None,
                   help='larger images get an error instead of a prediction (e.g. 20MB)')
    p.add_argument('--max-image-pixels', type=int, default=DEFAULT_MAX_PIXELS,
                   help='images whose header claims more pixels get an error, undecoded (default: %(default)s)')
    p.add_argument('--max-retries', type=int, default=3,
                   help='retries of a task/actor whose worker died, before the job ends (default: 3)')
    p.add_argument('--overwrite', action='store_true', help='recompute files whose output already exists')
    p.add_argument('--address', default=None,
                   help='Ray cluster: "auto", "ray://host:10001", ... (default: $RAY_ADDRESS, else a local instance)')
    p.add_argument('--num-cpus', type=int, default=None, help='CPUs of a local Ray instance')
    p.add_argument('--object-store-memory', type=_size, default=None, help='object store of a local Ray instance')
    p.add_argument('--summary-json', default=None, help='also write the run summary to this file')
    p.add_argument('--quiet', action='store_true')
    return p


def model_specs(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """--model CONFIG CHECKPOINT [PREFIX] (repeated) -> ModelSpecs; the one-model flags must then be absent."""
    if not args.model:
        if args.config is None:
            parser.error('give --config and --checkpoint, or --model CONFIG CHECKPOINT [PREFIX] (repeatable)')
        return ()
    for given in ('config', 'checkpoint', 'prefix', 'zero_shot'):
        if getattr(args, given):
            parser.error(f'--{given.replace("_", "-")} is the one-model form: with --model give every model as '
                         f'--model CONFIG CHECKPOINT [PREFIX]')
    bad = [m for m in args.model if len(m) not in (2, 3)]
    if bad:
        parser.error(f'--model takes CONFIG CHECKPOINT [PREFIX], got {bad[0]}')
    return tuple(ModelSpec(*m) for m in args.model)


def options_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser = None) -> ScoreOptions:
    models = model_specs(parser or build_parser(), args)
    return ScoreOptions(
        config=args.config, checkpoint=args.checkpoint, models=models, input=args.input, output=args.output,
        image_column=args.image_column, path_column=args.path_column, prefix=args.prefix, zero_shot=args.zero_shot,
        keep_raw_value=args.keep_raw_value, intervals=tuple(args.interval), embedding=args.embedding,
        batch_size=args.batch_size,
        num_actors=args.num_actors,
        num_gpus_per_actor=args.num_gpus_per_actor, precision=args.precision, cpus_per_actor=args.cpus_per_actor,
        cpus_per_decode_task=args.cpus_per_decode_task,
        decode_in_actor=None if args.decode_in is None else args.decode_in == 'actor',
        torch_threads=args.torch_threads, max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels or None, max_retries=args.max_retries, path_root=args.path_root,
        overwrite=args.overwrite,
        address=args.address, num_cpus=args.num_cpus, object_store_memory=args.object_store_memory)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format='%(asctime)s %(name)s %(levelname)s %(message)s')
    logging.getLogger('numclip_mm.batch').setLevel(logging.WARNING if args.quiet else logging.INFO)
    opts = options_from_args(args, parser)
    from numclip_mm.inference import CheckpointLoadError
    try:
        prep = prepare(opts)
    except (FileNotFoundError, CheckpointLoadError, catalog.ScoringSetupError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    try:
        summary = run(prep)
    except ScoringFailed as err:
        print(f'error: {err}', file=sys.stderr)
        if args.summary_json and err.report is not None:
            with open(args.summary_json, 'w') as f:
                json.dump(err.report, f, indent=2, default=str)
        return 1
    if args.summary_json:
        with open(args.summary_json, 'w') as f:
            json.dump(summary, f, indent=2, default=str)
    print(json.dumps({k: v for k, v in summary.items() if k != 'files'}, default=str))
    return 0


if __name__ == '__main__':
    sys.exit(main())
