"""The Ray Data scoring graph and the driver loop.

::

    from_items(one work item per (input file, row group))                                    driver: footers only
      CPU (default): map_batches(InferenceActor, ActorPoolStrategy)   read the row group's image/path column,
                     decode at the model's input size, infer; pixels never leave the actor
      GPU:           map_batches(RowGroupDecoder) CPU tasks -> map_batches(InferenceActor, num_gpus=...)
      -> small prediction columns (file, row, CRC of the cell, value/label/probability/error) to the driver
    driver: when all rows of a file are in, one Ray task (write_output, on a worker) streams that input file,
            checks every row's CRC, appends the columns and commits the output atomically (numclip_mm.batch.catalog).

So the driver reads Parquet footers and prediction columns only (tens of bytes per row), never an image; a 10 TB
catalog's bytes are read and written by the workers. Row order: every prediction carries its (file, row) index, so
outputs have exactly the input's rows in the input's order whatever order Ray finishes the work in. Resume: each
output records the input's identity, its row count and the model in its metadata (numclip_mm.batch.catalog.output_status);
files whose output matches are not read at all; a changed input or model is re-scored. With several models
(``--model`` repeated) every image is read and decoded once and goes through each model; the output records the set
of models, and a changed set re-scores the file (:data:`RESUME_RULE`).
Failures: a worker that dies (out of memory, crash) is retried at most ``max_retries`` times, then the job ends
with a message; the files already committed stay committed and the next run continues from them.
"""
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from . import catalog
from .columns import CELL_CRC, ERROR, FILE_INDEX, ROW_INDEX, cell_crcs, output_columns, prediction_schema, \
    prediction_types
from .decode import DEFAULT_MAX_PIXELS, CellDecoder, RowGroupDecoder, group_preprocessors

logger = logging.getLogger('numclip_mm.batch')

# How resume treats a set of models (also in the run summary and docs/batch_scoring.md).
RESUME_RULE = ('an output is complete only for the exact set of models it records (prefix -> config and checkpoint '
               'digests); adding, removing or changing a model re-scores the whole file with every model of the '
               'run: decoding, most of the CPU per image, has to be redone for the new model anyway, and one pass '
               'over one read of the input keeps every column of a file tied to the same input bytes (one cell CRC '
               'check, one identity, one atomic write)')


class ScoringFailed(RuntimeError):
    """The job stopped while scoring (after Ray's bounded retries, or because an input changed)."""

    def __init__(self, message: str, report: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.report = report


@dataclass
class ModelSpec:
    """One model of a job: ``--model CONFIG CHECKPOINT [PREFIX]`` (or --config/--checkpoint/--prefix)."""
    config: Any                            # config path or mmengine Config
    checkpoint: Optional[str]              # local path or URI; None needs zero_shot=True
    prefix: Optional[str] = None           # default: '{task.name}_'
    zero_shot: bool = False                # score with the config's pretrained CLIP (no checkpoint)


@dataclass
class ScoreOptions:
    input: str
    output: str
    config: Any = None                     # the one-model form (or models=[ModelSpec, ...]): config path or Config
    checkpoint: Optional[str] = None       # local path or URI; None needs zero_shot=True
    models: Sequence[ModelSpec] = ()       # several models in one pass (each adds its own columns)
    image_column: Optional[str] = None     # None (and no path_column): chosen from the schema (catalog docs)
    path_column: Optional[str] = None
    prefix: Optional[str] = None           # default: '{task.name}_'
    zero_shot: bool = False                # score with the config's pretrained CLIP (no checkpoint)
    keep_raw_value: bool = False           # also write {prefix}value_raw (before clamping to the task's range)
    intervals: Tuple[float, ...] = ()      # conformal coverage levels: {prefix}low_<level>/{prefix}high_<level>
    embedding: bool = False                # also write {prefix}embedding (fp16, L2-normalised image embedding)
    batch_size: Optional[int] = None       # default: 64 on CPU, 256 per GPU actor
    num_actors: int = 1
    num_gpus_per_actor: float = 0
    cpus_per_actor: float = 1
    cpus_per_decode_task: float = 1
    decode_in_actor: Optional[bool] = None  # default: True on CPU, False with GPUs (decode in CPU tasks)
    precision: Optional[str] = None        # fp32 | fp16 | bf16; default bf16/fp16 on CUDA, fp32 on CPU
    torch_threads: Optional[int] = None    # torch.set_num_threads in each actor (default: Ray's OMP setting)
    max_image_bytes: Optional[int] = None
    max_image_pixels: Optional[int] = DEFAULT_MAX_PIXELS
    path_root: Optional[str] = None        # relative paths in the path column are resolved against this folder
    overwrite: bool = False
    max_retries: int = 3                   # per task / actor restarts before the job ends
    max_writes_in_flight: int = 4
    progress_interval_s: float = 10.0
    address: Optional[str] = None          # None: RAY_ADDRESS or a local instance; 'auto', 'ray://...'
    num_cpus: Optional[int] = None         # only for a local ray.init
    object_store_memory: Optional[int] = None  # only for a local ray.init
    fault_injection: Optional[dict] = None  # tests only: see numclip_mm.batch.actor.InferenceActor

    def model_specs(self) -> List[ModelSpec]:
        """The job's models: ``models``, or the one-model form (config/checkpoint/prefix/zero_shot)."""
        if self.models:
            if self.config is not None or self.checkpoint is not None or self.prefix is not None or self.zero_shot:
                raise catalog.ScoringSetupError('give the models either with --model (repeatable) or with '
                                                '--config/--checkpoint/--prefix/--zero-shot, not both')
            return [m if isinstance(m, ModelSpec) else ModelSpec(*m) for m in self.models]
        if self.config is None:
            raise catalog.ScoringSetupError('no model: give --config and --checkpoint, or --model CONFIG CHECKPOINT')
        return [ModelSpec(self.config, self.checkpoint, self.prefix, self.zero_shot)]


@dataclass
class JobModel:
    """One model as the job runs it: checked up front, its identity and output columns decided."""
    config: Any                            # the loaded Config
    checkpoint: Optional[str]
    prefix: str
    task_name: str
    input_size: Optional[tuple]
    identity: Dict[str, str]               # config and checkpoint digests (and calibration): resume compares it
    names: Dict[str, str]                  # suffix -> output column name

    def actor_spec(self) -> Dict[str, Any]:
        return dict(config=self.config, checkpoint=self.checkpoint, prefix=self.prefix)


@dataclass
class ScoringJob:
    """Everything decided before Ray starts."""
    opts: ScoreOptions
    models: List[JobModel]
    fs_out: Any
    out_dir: str
    plans: List[catalog.FilePlan]
    source: catalog.ImageSource
    unscored: List[str] = field(default_factory=list)   # files seen in the input but not scored ('path (why)')
    ignored: int = 0                                     # hidden/_SUCCESS/_committed_*/.crc entries

    @property
    def column(self) -> str:
        return self.source.column

    @property
    def names(self) -> Dict[str, str]:
        """Prediction column -> output column, every model's, in output order (the actors name prediction
        columns as their outputs)."""
        return {name: name for m in self.models for name in m.names.values()}

    @property
    def model_identity(self) -> Dict[str, Dict[str, str]]:
        """Model prefix -> identity: an output is complete only for exactly this set of models."""
        return {m.prefix: m.identity for m in self.models}

    @property
    def error_columns(self) -> List[str]:
        return [m.names[ERROR] for m in self.models]

    @property
    def prediction_columns(self) -> List[str]:
        """Every column the actors return for the writer (value_raw included)."""
        types = prediction_types(self.opts.intervals, self.opts.embedding)
        return [f'{m.prefix}{k}' for m in self.models for k in types]


# ----------------------------------------------------------------------------------------------------------------
# before Ray

def _config_digest(cfg) -> str:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


def prepare(opts: ScoreOptions) -> ScoringJob:
    """All checks that need no Ray. Raises FileNotFoundError, CheckpointMismatchError or ScoringSetupError."""
    from numclip_mm.inference import PRECISIONS
    Err = catalog.ScoringSetupError
    if (opts.batch_size is not None and opts.batch_size < 1) or opts.num_actors < 1:
        raise Err('batch size and number of actors must be at least 1')
    for name in ('max_image_bytes', 'max_image_pixels'):
        if getattr(opts, name) is not None and getattr(opts, name) < 1:
            raise Err(f'--{name.replace("_", "-")} must be positive')
    if opts.precision is not None and opts.precision not in PRECISIONS:
        raise Err(f'--precision must be one of {sorted(PRECISIONS)}, got {opts.precision!r}')
    models = [_prepare_model(spec, opts) for spec in opts.model_specs()]
    names = [name for m in models for name in m.names.values()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise Err(f'several models would write the columns {twice}: give each --model its own PREFIX')
    column_names = {name: name for name in names}
    identity = {m.prefix: m.identity for m in models}
    job_plan = catalog.plan_job(opts.input, opts.output, image_column=opts.image_column,
                                path_column=opts.path_column, new_columns=column_names, model=identity,
                                overwrite=opts.overwrite)
    return ScoringJob(opts, models, job_plan.fs_out, job_plan.out_dir, job_plan.plans, job_plan.source,
                      job_plan.unscored, job_plan.ignored)


def _prepare_model(spec: ModelSpec, opts: ScoreOptions) -> JobModel:
    """One model's up-front checks: config, checkpoint (exact key/shape check, digest), calibration, prefix."""
    from numclip_mm.inference import SIDECAR_SUFFIX, describe_model, load_config
    Err = catalog.ScoringSetupError
    if spec.checkpoint is not None and '://' not in spec.checkpoint and not os.path.isfile(spec.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {spec.checkpoint}')
    config = load_config(spec.config)
    if spec.checkpoint is None:
        pretrained = (config.model.get('clip') or {}).get('pretrained')
        if not spec.zero_shot:
            raise Err('no --checkpoint: scoring needs the trained checkpoint; to score zero-shot with the config\'s '
                      'pretrained CLIP say so with --zero-shot')
        if not pretrained:
            raise Err('--zero-shot needs pretrained CLIP weights, but the config\'s model.clip.pretrained is '
                      f'{pretrained!r}: its weights would be random; give --checkpoint')
        checkpoint_digest = f'pretrained:{pretrained}'
    elif spec.zero_shot:
        raise Err('--zero-shot and --checkpoint exclude each other')
    with catalog.local_copy(spec.checkpoint, companions=(SIDECAR_SUFFIX,) if opts.intervals else ()) as local:
        model = describe_model(config, local)  # exact key/shape check
        if spec.checkpoint is not None:
            checkpoint_digest = catalog.file_digest(local)
        calibration_digest = _check_calibration(opts, spec.checkpoint, local) if opts.intervals else None
    task = model['task']
    prefix = f'{task.name}_' if spec.prefix is None else spec.prefix
    names = output_columns(prefix, opts.keep_raw_value, opts.intervals, opts.embedding)
    identity = dict(config=_config_digest(config), checkpoint=checkpoint_digest)
    if calibration_digest is not None:  # new thresholds give other bounds: outputs of the old ones are stale
        identity['calibration'] = calibration_digest
    return JobModel(config, spec.checkpoint, prefix, task.name, model['input_size'], identity, names)


def _check_calibration(opts: ScoreOptions, checkpoint: Optional[str], local_checkpoint: Optional[str]) -> str:
    """Refuse intervals the checkpoint's calibration cannot give (before any work); returns its sha256.
    ``local_checkpoint`` is the checkpoint's local copy, its sidecar beside it (:func:`catalog.local_copy`)."""
    from numclip_mm.inference import check_calibration, sidecar_path
    Err = catalog.ScoringSetupError
    levels = [f'{v:g}' for v in opts.intervals]
    if checkpoint is None:
        raise Err('--interval needs a checkpoint with a conformal calibration (tools/calibrate.py); zero-shot '
                  'scoring has none')
    sidecar = sidecar_path(local_checkpoint)
    if not os.path.isfile(sidecar):
        raise Err(f'--interval {" ".join(levels)}: the checkpoint has no conformal calibration '
                  f'({sidecar_path(checkpoint)} not found); run tools/calibrate.py CONFIG {checkpoint} '
                  f'--coverage {" ".join(levels)} first')
    try:
        check_calibration(sidecar, local_checkpoint, opts.intervals)
    except (KeyError, ValueError) as err:
        raise Err(f'--interval: {str(err).strip(chr(34) + chr(39))}') from None
    return catalog.file_digest(sidecar)


# ----------------------------------------------------------------------------------------------------------------
# the Ray side

def ensure_ray(opts: ScoreOptions) -> bool:
    """Connect to (or start) Ray unless it already runs in this process. Returns True if we started it."""
    if opts.address is None and not os.environ.get('RAY_ADDRESS'):
        os.environ.setdefault('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', '0')  # keep a local instance on loopback
    import ray
    if ray.is_initialized():
        return False
    if opts.address is not None or os.environ.get('RAY_ADDRESS'):
        ray.init(address=opts.address, log_to_driver=True)
    else:
        ray.init(num_cpus=opts.num_cpus, include_dashboard=False, object_store_memory=opts.object_store_memory,
                 _node_ip_address='127.0.0.1')
    return True


def work_items(plans: Sequence[catalog.FilePlan]) -> List[Dict[str, Any]]:
    """One item per (file, non-empty row group): the unit of a read + decode task."""
    items = []
    for index, plan in enumerate(plans):
        offset = 0
        for group, n in enumerate(plan.row_group_rows):
            if n:
                items.append(dict(file=index, path=plan.input, row_group=group, offset=offset))
            offset += n
    return items


def build_dataset(job: ScoringJob, plans: Sequence[catalog.FilePlan]):
    """The lazy Ray Dataset of prediction columns (numclip_mm.batch.columns.prediction_schema) for ``plans``."""
    import ray

    from .actor import InferenceActor
    from numclip_mm.inference import ImagePreprocessor
    opts = job.opts
    gpu = bool(opts.num_gpus_per_actor)
    batch_size = opts.batch_size or (256 if gpu else 64)
    in_actor = (not gpu) if opts.decode_in_actor is None else opts.decode_in_actor
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # not needed for correctness (rows are tagged); bounds buffering
    items = work_items(plans)
    preprocessors = None
    if not in_actor:  # decode tasks bring each distinct model input once (actors bring their own otherwise)
        preprocessors, _ = group_preprocessors([ImagePreprocessor(m.config, m.input_size) for m in job.models])
    row_decoder = RowGroupDecoder(
        CellDecoder(preprocessors, job.source.kind, opts.max_image_bytes, opts.max_image_pixels,
                    opts.path_root or os.getcwd()), job.column, batch_size)
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    if not in_actor:
        ds = ds.map_batches(row_decoder, batch_size=1, batch_format='numpy', num_cpus=opts.cpus_per_decode_task,
                            max_retries=opts.max_retries)
    remote = dict(num_cpus=opts.cpus_per_actor, max_restarts=opts.max_retries, max_task_retries=opts.max_retries)
    if gpu:
        remote['num_gpus'] = opts.num_gpus_per_actor
    return ds.map_batches(
        InferenceActor, batch_format='numpy', batch_size=1 if in_actor else batch_size,
        compute=ray.data.ActorPoolStrategy(size=opts.num_actors),
        fn_constructor_kwargs=dict(models=[m.actor_spec() for m in job.models], device='cuda' if gpu else 'cpu',
                                   precision=opts.precision, torch_threads=opts.torch_threads,
                                   row_decoder=row_decoder if in_actor else None, intervals=opts.intervals,
                                   embedding=opts.embedding, fault_injection=opts.fault_injection),
        **remote)


def _check_crcs(input_column, predictions: pa.Table, first_row: int, source: str = '') -> None:
    expected = cell_crcs(input_column)
    got = predictions.column(CELL_CRC).to_numpy()
    if not np.array_equal(expected, got):
        row = first_row + int(np.flatnonzero(expected != got)[0])
        raise RuntimeError(f'{source} changed while it was scored (row {row} differs); nothing was written for '
                           f'this file: run the job again')


def write_output(plan: catalog.FilePlan, predictions: pa.Table, names: Dict[str, str], column: str,
                 metadata: Dict[str, Any], error_columns: Sequence[str] = ()) -> int:
    """Ray task: the output file of ``plan`` (on a worker). Returns the number of rows with an error."""
    def check(col, part, first_row):
        _check_crcs(col, part, first_row, plan.input)
    return catalog.write_scored_file(plan, predictions, names, column, metadata, check, error_columns)


class Progress:
    """Rows done / total, rows/s and ETA every ``interval`` seconds, and one line per finished file."""

    def __init__(self, total_rows: int, total_files: int, interval: float):
        self.total_rows, self.total_files, self.interval = total_rows, total_files, interval
        self.rows = self.files = 0
        self.start = self.last = time.perf_counter()

    def add_rows(self, n: int) -> None:
        self.rows += n
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            rate = self.rows / max(now - self.start, 1e-9)
            eta = (self.total_rows - self.rows) / rate if rate else float('inf')
            logger.info('scored %d/%d rows (%.1f %%), %.1f rows/s, ETA %.0f s; %d/%d files written', self.rows,
                        self.total_rows, 100 * self.rows / max(self.total_rows, 1), rate, eta, self.files,
                        self.total_files)

    def file_done(self, plan: catalog.FilePlan, bad: int) -> None:
        self.files += 1
        elapsed = time.perf_counter() - self.start
        logger.info('[%d/%d] %s -> %s: %d rows (%d with errors); %d/%d rows in %.1f s, %.1f rows/s', self.files,
                    self.total_files, plan.input, plan.output, plan.num_rows, bad, self.rows, self.total_rows,
                    elapsed, self.rows / max(elapsed, 1e-9))




def run(job: ScoringJob) -> Dict[str, Any]:
    """Score the plan's pending files. Returns a summary (also logged); raises ScoringFailed when files failed."""
    opts = job.opts
    report: Dict[str, Any] = dict(
        image_column=dict(column=job.source.column, kind=job.source.kind, reason=job.source.reason),
        models=[dict(prefix=m.prefix, task=m.task_name, config=_name(m.config), checkpoint=m.checkpoint,
                     columns=list(m.names.values())) for m in job.models],
        columns=list(job.names), files=[], failed=[], unscored_files=job.unscored, ignored_files=job.ignored,
        resume=RESUME_RULE)
    logger.info('image column %r (%s cells): %s', job.source.column, job.source.kind, job.source.reason)
    if len(job.models) > 1:
        logger.info('%d models in one pass: %s', len(job.models), ', '.join(
            f'{m.prefix}* ({_name(m.config)}, input {m.input_size})' for m in job.models))
    if job.unscored:
        logger.warning('%d files in the input are not scored: %s%s', len(job.unscored), '; '.join(job.unscored[:20]),
                       f' ... (all {len(job.unscored)} in the summary)' if len(job.unscored) > 20 else '')
    if job.ignored:
        logger.info('%d hidden or bookkeeping entries ignored (names starting with "." or "_", .crc files)',
                    job.ignored)
    if catalog.is_local(job.fs_out):
        for p in catalog.clean_stale_temporaries(job.fs_out, job.out_dir):
            logger.info('removed a partial output of an earlier run: %s', p)
    pending = [p for p in job.plans if not p.complete]
    for p in job.plans:
        if p.complete:
            report['files'].append(dict(input=p.input, output=p.output, rows=p.num_rows, status='skipped'))
        elif p.status.startswith('stale'):
            logger.info('re-scoring %s: its output is %s', p.input, p.status)
    logger.info('%d input files, %d rows: %d already scored, %d to score', len(job.plans),
                sum(p.num_rows for p in job.plans), len(job.plans) - len(pending), len(pending))
    start = time.perf_counter()
    if pending:
        started = ensure_ray(opts)
        try:
            _score(job, pending, report, start)
        finally:
            if started:
                import ray
                ray.shutdown()
    elapsed = time.perf_counter() - start
    rows = sum(f['rows'] for f in report['files'] if f['status'] == 'written')
    report.update(rows_scored=rows, seconds=elapsed, rows_per_s=rows / elapsed if rows else 0.0,
                  files_written=sum(f['status'] == 'written' for f in report['files']),
                  files_skipped=len(job.plans) - len(pending))
    order = {p.input: i for i, p in enumerate(job.plans)}
    report['files'].sort(key=lambda f: order[f['input']])
    logger.info('done: %d files written, %d skipped, %d failed, %d rows in %.1f s%s', report['files_written'],
                report['files_skipped'], len(report['failed']), rows, elapsed,
                f'; {len(job.unscored)} files in the input not scored (listed above)' if job.unscored else '')
    if report['failed']:
        raise ScoringFailed('; '.join(f['error'] for f in report['failed']) + ' (committed outputs are kept: run the '
                            'same command again to finish)', report)
    return report


def _score(job: ScoringJob, pending: List[catalog.FilePlan], report: Dict[str, Any], start: float) -> None:
    import ray
    opts = job.opts
    writer = ray.remote(write_output).options(  # I/O bound: no CPU reserved (never starved by the actors),
        num_cpus=0, max_retries=opts.max_retries, scheduling_strategy='SPREAD')  # spread over the nodes
    ds = build_dataset(job, pending)
    buffers: Dict[int, List[pa.Table]] = {i: [] for i in range(len(pending))}
    counts = {i: 0 for i in range(len(pending))}
    in_flight: Dict[Any, int] = {}
    columns = job.prediction_columns
    progress = Progress(sum(p.num_rows for p in pending), len(pending), opts.progress_interval_s)

    def collect(refs) -> None:
        for ref in refs:
            i = in_flight.pop(ref)
            p = pending[i]
            try:
                bad = ray.get(ref)
            except Exception as err:  # noqa: BLE001  (one file failing does not stop the others)
                msg = str(getattr(err, 'cause', None) or err).strip().splitlines()[-1]
                logger.error('%s: %s', p.input, msg)
                report['failed'].append(dict(input=p.input, error=f'{p.input}: {msg}'))
                report['files'].append(dict(input=p.input, output=p.output, rows=p.num_rows, status='failed'))
                continue
            progress.file_done(p, bad)
            report['files'].append(dict(input=p.input, output=p.output, rows=p.num_rows, errors=bad,
                                        status='written'))

    def finish(i: int) -> None:
        chunks = buffers.pop(i)
        preds = pa.concat_tables(chunks) if chunks else prediction_schema(
            opts.intervals, [m.prefix for m in job.models], opts.embedding).empty_table().select(
            [ROW_INDEX, CELL_CRC, *columns])
        preds = preds.sort_by(ROW_INDEX)
        p = pending[i]
        if preds.num_rows != p.num_rows or not np.array_equal(preds.column(ROW_INDEX).to_numpy(),
                                                               np.arange(p.num_rows)):
            raise ScoringFailed(f'{p.input}: the pipeline returned {preds.num_rows} prediction rows for '
                                f'{p.num_rows} input rows (or duplicates); nothing was written for this file')
        while len(in_flight) >= opts.max_writes_in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1)
            collect(done)
        metadata = catalog.expected_metadata(p, job.model_identity, job.names)
        in_flight[writer.remote(p, preds, job.names, job.column, metadata, job.error_columns)] = i

    for i, p in enumerate(pending):
        if p.num_rows == 0:
            finish(i)
    try:
        for table in ds.iter_batches(batch_format='pyarrow', batch_size=None, prefetch_batches=2):
            if not table.num_rows:
                continue
            report.setdefault('first_output_s', time.perf_counter() - start)
            files = table.column(FILE_INDEX).to_numpy()
            for i in np.unique(files).tolist():
                part = table if files[0] == files[-1] == i else table.filter(pa.array(files == i))
                if i not in buffers:
                    raise ScoringFailed(f'prediction rows for {pending[i].input} arrived after it was written')
                buffers[i].append(part.select([ROW_INDEX, CELL_CRC, *columns]).combine_chunks())
                counts[i] += part.num_rows
                progress.add_rows(part.num_rows)
                if counts[i] >= pending[i].num_rows:
                    finish(i)
            done, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0) if in_flight else ([], 0)
            collect(done)
    except ScoringFailed:
        raise
    except Exception as err:  # noqa: BLE001  (Ray's bounded retries are exhausted: end the job with a message)
        if in_flight:
            collect(ray.wait(list(in_flight), num_returns=len(in_flight))[0])
        raise ScoringFailed(
            f'scoring stopped after {opts.max_retries} retries of a failing worker ({type(err).__name__}: '
            f'{str(err).strip().splitlines()[-1] if str(err).strip() else ""}). A worker that dies again and again is '
            f'usually out of memory: lower --batch-size or --max-image-pixels, or give actors more memory. '
            f'{len(report["files"])} files are complete and kept; run the same command again to continue.',
            report) from err
    if in_flight:
        collect(ray.wait(list(in_flight), num_returns=len(in_flight))[0])
    if buffers:
        missing = [pending[i].input for i in buffers]
        raise ScoringFailed(f'the pipeline returned too few rows for {missing}')


def _name(config) -> str:
    """A config as the summary names it: its file, or 'Config object'."""
    return config if isinstance(config, str) else getattr(config, 'filename', None) or 'Config object'


def score_catalog(opts: ScoreOptions = None, **kwargs) -> Dict[str, Any]:
    """Check everything up front, then score. ``score_catalog(config=..., checkpoint=..., input=..., output=...)``."""
    opts = opts or ScoreOptions(**kwargs)
    return run(prepare(opts))


__all__ = ['ModelSpec', 'ScoreOptions', 'ScoringFailed', 'ScoringJob', 'prepare', 'run', 'score_catalog']
