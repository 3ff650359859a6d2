"""Score a Parquet image catalog with a trained NumCLIP model, on Ray or in-process.

Local run (a small machine alone: threads of this command; else a private Ray instance; ``--engine`` chooses);
three equivalent forms::

    numclip-score --config CFG --checkpoint CKPT --input catalog/ --output scored/
    numclip-score --model CFG1 CKPT1 --model CFG2 CKPT2 age_ --input catalog/ --output scored/   # one pass, 2 models
    python -m numclip_mm.batch.score ...
    python batch/score.py ...            # what `ray submit cluster.yaml batch/score.py -- ...` runs

On a running cluster: ``ray job submit`` or ``ray submit`` (see docs/batch_scoring.md).

Every input column is kept and these are added per model: ``{prefix}value`` (the predicted number, clamped to the
task's range), ``{prefix}label`` (the concept of the bin the value falls in) and ``{prefix}probability`` (that
bin's), ``{prefix}bin_argmax`` and ``{prefix}bin_argmax_probability`` (the most probable bin and its probability) and
``{prefix}error`` (null on success); one output file per input file, same relative path, same row order. Files whose
complete output exists are skipped (re-run a killed job to continue), unless ``--overwrite``.
With no sizing options the job uses the whole cluster it runs on (one inference actor per GPU, else one per CPU);
the first log lines say what was chosen. Exit status: 0 done, 2 bad arguments, inputs, config or output folder, or
no Ray cluster at the address (nothing started), 1 failure while scoring, 130/143 stopped by SIGINT/SIGTERM
(complete outputs kept, no partial output left, the private Ray instance shut down).
"""
import argparse
import gc
import json
import logging
import signal
import sys
import time
from typing import Optional

from numclip_mm.batch import catalog
from numclip_mm.batch.cluster import RayStarter, RayUnavailable
from numclip_mm.batch.engine import ENGINES, IN_PROCESS_MAX_CPUS, Engine, choose_engine
from numclip_mm.batch.pipeline import ModelSpec, ScoreOptions, ScoringFailed, preflight, prepare, run
from numclip_mm.shared import DEFAULT_MAX_PIXELS, PRECISION_DTYPES
from numclip_mm.utils.config_file import ConfigLoadError


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
                   help='folder that relative paths in --path-column are resolved against (default: current dir); '
                        'when given, local paths that resolve outside it (.., symbolic links) get an error')
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
    size = p.add_argument_group('sizing (default: sized from the cluster\'s available resources, see the first log '
                                'lines: one actor per GPU, else one per CPU with one torch thread each)')
    size.add_argument('--batch-size', type=int, default=None, help='default: 64 on CPU, 256 per GPU actor')
    size.add_argument('--num-actors', type=int, default=None, help='inference actors (model replicas)')
    size.add_argument('--num-gpus-per-actor', type=float, default=None,
                      help='default: 1 when the cluster has GPUs, else 0 (CPU inference)')
    p.add_argument('--no-graph', dest='graph', action='store_false',
                   help='CPU actors build every model from its config and checkpoint instead of loading the '
                        'driver\'s TorchScript trace of it (the trace saves each actor ~3 s of imports and model '
                        'build; GPU actors always build the model)')
    p.add_argument('--graph-cache', default='auto', metavar='DIR|off',
                   help='where the driver keeps its traces between jobs, keyed by checkpoint, config and code, so a '
                        'model scored before is neither built nor traced again (default: $NUMCLIP_MM_GRAPH_CACHE, '
                        'else ~/.cache/numclip_mm/graphs; off: trace every job)')
    p.add_argument('--no-head-start', dest='head_start', action='store_false',
                   help='the driver does not score work items itself while the actors start (it does by default on '
                        'a private Ray instance, from the back of the list, until the actors\' first predictions '
                        'arrive)')
    p.add_argument('--precision', choices=sorted(PRECISION_DTYPES), default=None,
                   help='inference precision (autocast); default bf16 (fp16 on older GPUs) on CUDA, fp32 on CPU')
    size.add_argument('--cpus-per-actor', type=float, default=None)
    size.add_argument('--cpus-per-decode-task', type=float, default=None)
    size.add_argument('--decode-in', choices=['actor', 'tasks'], default=None,
                      help='decode images inside the inference actors (default on CPU) or in separate CPU tasks '
                           '(default with GPUs)')
    size.add_argument('--torch-threads', type=int, default=None, help='torch threads per actor')
    p.add_argument('--max-image-bytes', type=_size, default=catalog.DEFAULT_MAX_IMAGE_BYTES,
                   help='larger images get an error instead of a prediction, read no further (e.g. 20MB; '
                        'default: 64MiB)')
    p.add_argument('--read-timeout', type=float, default=catalog.DEFAULT_READ_TIMEOUT_S,
                   help='seconds for the whole read of one image URI (connection, answer and body); slower reads '
                        'get an error (default: %(default)s)')
    p.add_argument('--max-image-pixels', type=int, default=DEFAULT_MAX_PIXELS,
                   help='images whose header claims more pixels get an error, undecoded (default: %(default)s; '
                        '0: no limit)')
    p.add_argument('--max-retries', type=int, default=3,
                   help='retries of a task/actor whose worker died, before the job ends (default: 3)')
    p.add_argument('--overwrite', action='store_true', help='recompute files whose output already exists')
    p.add_argument('--engine', choices=ENGINES, default='auto',
                   help='who scores: "in-process" (threads of this command, no Ray), "ray" (actors on a private '
                        'instance or the cluster found as --address says), or "auto" (default): in-process on a '
                        f'machine of at most {IN_PROCESS_MAX_CPUS} CPUs with no GPU and no Ray cluster named, else '
                        'Ray; the first log line says which and why')
    p.add_argument('--address', default=None,
                   help='Ray cluster, found as ray.init finds it: this address (host:port, ray://host:10001, "auto"), '
                        'else $RAY_ADDRESS, else the cluster a `ray start` on this machine recorded, else a new '
                        'private instance on this machine (always with "local"); an address where no cluster '
                        'answers fails within 30 s')
    p.add_argument('--num-cpus', type=int, default=None,
                   help='CPUs to use on this machine: the in-process engine\'s threads, or a private Ray '
                        'instance\'s CPUs (implies --address local)')
    p.add_argument('--object-store-memory', type=_size, default=None,
                   help='object store of a private Ray instance (implies --address local)')
    p.add_argument('--summary-json', default=None, help='also write the run summary to this file')
    p.add_argument('--quiet', action='store_true',
                   help='log warnings only (no progress lines; the summary is still printed)')
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
        batch_size=args.batch_size, num_actors=args.num_actors, num_gpus_per_actor=args.num_gpus_per_actor,
        graph=args.graph, head_start=args.head_start, graph_cache=args.graph_cache,
        precision=args.precision, cpus_per_actor=args.cpus_per_actor,
        cpus_per_decode_task=args.cpus_per_decode_task,
        decode_in_actor=None if args.decode_in is None else args.decode_in == 'actor',
        torch_threads=args.torch_threads, max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels or None, max_retries=args.max_retries, path_root=args.path_root,
        read_timeout=args.read_timeout,
        overwrite=args.overwrite,
        engine=args.engine, address=args.address, num_cpus=args.num_cpus, object_store_memory=args.object_store_memory)


class Stopped(BaseException):
    """SIGTERM or SIGINT arrived: unwind (outputs already committed stay), then exit 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


def main(argv=None, pause_gc: bool = False) -> int:
    """The command line; returns the exit status. ``pause_gc``: the process is the command's own (:func:`cli`)."""
    started_at = time.time()
    if pause_gc:
        gc.disable()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format='%(asctime)s %(name)s %(levelname)s %(message)s')
    logging.getLogger('numclip_mm.batch').setLevel(logging.WARNING if args.quiet else logging.INFO)
    opts = options_from_args(args, parser)
    handlers = {}

    def install_handlers():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.signal(sig, _stop)
            handlers.setdefault(sig, previous)
    try:
        install_handlers()
    except ValueError:  # not the main thread (main() called from a library): the caller handles signals
        pass
    starter = None
    try:
        try:
            configs = preflight(opts)  # what needs no model and no listing: a typo ends here, with nothing started
            engine = choose_engine(opts)
        except (FileNotFoundError, ConfigLoadError, catalog.ScoringSetupError) as err:
            print(f'error: {err}', file=sys.stderr)
            return 2
        if engine.name == 'ray':
            # Ray starts (or is connected) in the background while the inputs, model and checkpoint are checked
            starter = RayStarter(opts.address, opts.num_cpus, opts.object_store_memory)
            if handlers:  # Ray's core worker installs its own C++ SIGTERM handler (a stack dump, then abort): ours
                starter.on_ready.append(install_handlers)
            if pause_gc:
                starter.on_ready.append(_resume_gc)
            starter.start()
        return _main(args, opts, configs, starter, started_at, engine, resume_gc=pause_gc and starter is None)
    except RayUnavailable as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    except Stopped as stop:
        for sig in handlers:  # a second signal must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        name = signal.Signals(stop.signum).name
        if starter is not None:
            starter.close()
        _remove_partial_outputs(opts)
        print(f'numclip-score: stopped by {name}; complete outputs are kept and no partial output is left: run the '
              f'same command again to continue', file=sys.stderr)
        return 128 + stop.signum
    finally:
        if starter is not None:
            starter.close()  # (a no-op when run() closed it already)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if pause_gc:
            gc.freeze()  # the interpreter's exit would otherwise walk every object once more (~2 s here)


def _resume_gc() -> None:
    """Once Ray is up (in-process: once the job is prepared): what start-up made is frozen (never walked again),
    then collection resumes for the job."""
    gc.freeze()
    gc.enable()


def cli(argv=None) -> None:
    """``numclip-score``, ``python -m numclip_mm.batch.score`` and ``batch/score.py``: :func:`main` in a process of
    its own. Start-up (torch, Ray, mmpretrain, open_clip) leaves ~500,000 long-lived objects, which the garbage
    collector would walk again and again while they arrive (~1.3 s of the driver's start here) and once more when the
    interpreter exits (~2 s): collection waits until Ray is up, and both moments freeze what exists (gc.freeze)."""
    sys.exit(main(argv, pause_gc=True))


def _remove_partial_outputs(opts: ScoreOptions) -> None:
    """After every writer is gone (the driver's write threads were joined, Ray's tasks ended with it): delete the
    temporary files of writes that were cut short."""
    try:
        fs, out_dir = catalog.url_to_fs(opts.output)
        if catalog.is_local(fs):
            catalog.clean_stale_temporaries(fs, out_dir)
    except Exception:  # noqa: BLE001  (best effort on the way out; the next run cleans up as well)
        pass


def _main(args, opts: ScoreOptions, configs, starter: Optional[RayStarter], started_at: float, engine: Engine,
          resume_gc: bool = False) -> int:
    """``resume_gc``: collection resumes once the job is prepared (no Ray start to wait for)."""
    from numclip_mm.inference import CheckpointLoadError
    try:
        prep = prepare(opts, configs)
    except (FileNotFoundError, CheckpointLoadError, ConfigLoadError, catalog.ScoringSetupError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    if resume_gc:
        _resume_gc()
    try:
        summary = run(prep, ray_starter=starter, started_at=started_at, engine=engine)
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
    cli()
