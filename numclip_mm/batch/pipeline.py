"""The Ray Data scoring graph and the driver loop (on a small machine alone the driver's threads score the same work
items instead, without Ray: :mod:`numclip_mm.batch.engine`, :mod:`numclip_mm.batch.in_process`).

::

    driver: reads and hashes each checkpoint once, builds the model from those bytes and traces it (a frozen
            TorchScript graph, put in Ray's object store; CPU actors load it with torch alone); on a private
            instance it scores row groups from the back of the list itself until the actors' first predictions
            arrive (numclip_mm.batch.head_start)
    from_items(one work item per (input file, row group))                                    driver: footers only
      CPU (default): map_batches(InferenceActor, ActorPoolStrategy)   read the row group's image/path column,
                     decode at the model's input size, infer; pixels never leave the actor
      GPU:           map_batches(RowGroupDecoder) CPU tasks -> map_batches(InferenceActor, num_gpus=...)
      -> small prediction columns (file, row, CRC of the cell, value/label/probability/error) to the driver
    driver: when all rows of a file are in, one write (a Ray task on a worker; a driver thread on a private
            instance: numclip_mm.batch.writers) streams that input file, checks every row's CRC, appends the
            columns and commits the output atomically (numclip_mm.batch.catalog).

So on a cluster the driver reads Parquet footers and prediction columns only (tens of bytes per row), never an
image; a 10 TB catalog's bytes are read and written by the workers. Row order: every prediction carries its (file,
row) index, so outputs have exactly the input's rows in the input's order whatever order Ray finishes the work in.
Resume: each output records the input's identity, its row count and the model in its metadata
(numclip_mm.batch.catalog.output_status); files whose output matches are not read at all; a changed input or model
is re-scored. With several models (``--model`` repeated) every image is read and decoded once and goes through each
model; the output records the set of models, and a changed set re-scores the file (:data:`RESUME_RULE`).
Failures: a worker that dies (out of memory, crash) is retried at most ``max_retries`` times, then the job ends
with a message; the files already committed stay committed and the next run continues from them. A job that ends,
failed or not, releases its actors before it returns, also while its caller keeps the exception.
"""
import gc
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pyarrow as pa

from ..shared import DEFAULT_MAX_PIXELS, PRECISION_DTYPES, bytes_digest, file_digest
from . import catalog
from .claims import DRIVER, WorkClaims
from .cluster import ACTOR_BASE_MEMORY, CPU_BATCH_SIZE, RayStarter, Sizing, cluster_resources, size_pipeline
from .collection import Collection, ScoringFailed, last_error_line
from .columns import (
    EMBEDDING_TYPE,
    ERROR,
    output_columns,
    prediction_schema,
    prediction_types,
)
from .decode import CellDecoder, RowGroupDecoder, group_preprocessors
from .engine import Engine, choose_engine
from .errortext import error_text
from .head_start import HeadStart
from .in_process import InProcessScorer, ItemFailed
from .writers import RayWriters, ThreadWriters

logger = logging.getLogger('numclip_mm.batch')

# How resume treats a set of models (also in the run summary and docs/batch_scoring.md).
RESUME_RULE = ('an output is complete only for the exact set of models it records (prefix -> config and checkpoint '
               'digests); adding, removing or changing a model re-scores the whole file with every model of the '
               'run: decoding, most of the CPU per image, has to be redone for the new model anyway, and one pass '
               'over one read of the input keeps every column of a file tied to the same input bytes (one cell CRC '
               'check, one identity, one atomic write)')


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
    # sizing (numclip_mm.batch.cluster.size_pipeline): None = sized from the cluster's available resources
    batch_size: Optional[int] = None       # default: 64 on CPU, 256 per GPU actor
    num_actors: Optional[int] = None       # default: one per GPU, else one per CPU (fewer when memory is short)
    num_gpus_per_actor: Optional[float] = None  # default: 1 when the cluster has GPUs, else 0
    graph: bool = True                     # CPU actors load the driver's TorchScript trace of each model (torch
    #                                        only); False: every actor builds each model from config and checkpoint
    head_start: bool = True                # on a private instance the driver scores while the actors start
    graph_cache: Optional[str] = 'auto'    # folder of traces kept between jobs ('auto': $NUMCLIP_MM_GRAPH_CACHE,
    #                                        else ~/.cache/numclip_mm/graphs; 'off': trace every job)
    cpus_per_actor: Optional[float] = None
    cpus_per_decode_task: Optional[float] = None
    decode_in_actor: Optional[bool] = None  # default: True on CPU, False with GPUs (decode in CPU tasks)
    precision: Optional[str] = None        # fp32 | fp16 | bf16; default bf16/fp16 on CUDA, fp32 on CPU
    torch_threads: Optional[int] = None    # torch.set_num_threads in each actor (default: sized, 1 per CPU actor)
    max_image_bytes: Optional[int] = catalog.DEFAULT_MAX_IMAGE_BYTES  # larger images: a row error, read no further
    max_image_pixels: Optional[int] = DEFAULT_MAX_PIXELS
    path_root: Optional[str] = None        # relative paths are resolved against it; no local path may leave it
    read_timeout: float = catalog.DEFAULT_READ_TIMEOUT_S  # seconds for the whole read of one image URI
    overwrite: bool = False
    max_retries: int = 3                   # per task / actor restarts before the job ends
    max_writes_in_flight: int = 4
    progress_interval_s: float = 10.0
    engine: str = 'auto'                   # 'in-process' (threads of the driver), 'ray', or 'auto': in-process on
    #                                        a small machine with no cluster and no GPU (numclip_mm.batch.engine)
    address: Optional[str] = None          # as ray.init: RAY_ADDRESS, a `ray start` cluster, else a new one; 'local'
    num_cpus: Optional[int] = None         # only for a private local instance (implies address='local')
    object_store_memory: Optional[int] = None  # only for a local ray.init

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
    checkpoint_sha256: Optional[str] = None  # what every actor must load (None: zero-shot, no checkpoint)
    calibration: Any = None                  # the checked numclip_mm.conformal.Calibration when intervals are asked
    checkpoint_bytes: int = 0                # its size (local or remote), measured when the driver checked it
    graph: Optional[bytes] = None            # the model's TorchScript archive (Predictor.trace), None: not traced
    graph_note: str = ''                     # why there is no graph
    graph_source: str = ''                   # where the graph came from: traced now, or the graph cache

    def actor_spec(self, graph=None) -> Dict[str, Any]:
        """What an actor loads: the model's graph (``graph``: the archive or its Ray object reference) or, without
        one, its config and the checkpoint with the digest the driver checked."""
        if graph is not None:  # (the config object would make the actor import mmengine to unpickle it)
            return dict(prefix=self.prefix, calibration=self.calibration, graph=graph)
        return dict(config=self.config, checkpoint=self.checkpoint, prefix=self.prefix,
                    checkpoint_sha256=self.checkpoint_sha256, calibration=self.calibration)


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


def preflight(opts: ScoreOptions) -> List[Any]:
    """The checks that need neither torch nor a model nor an input listing: option ranges, each model's config
    (loaded: a syntax error or an exception in it names the file and line), its local checkpoint, a local output
    folder that is a file or cannot be written. The command line runs them before it starts Ray, so that a typo ends
    it at once and starts nothing. Returns each model's loaded config (for :func:`prepare`). Raises
    FileNotFoundError, :class:`numclip_mm.utils.config_file.ConfigLoadError` or ScoringSetupError."""
    from numclip_mm.utils.config_file import load_config_file
    Err = catalog.ScoringSetupError
    if (opts.batch_size is not None and opts.batch_size < 1) or (opts.num_actors is not None and opts.num_actors < 1):
        raise Err('batch size and number of actors must be at least 1')
    for name in ('max_image_bytes', 'max_image_pixels', 'read_timeout'):
        if getattr(opts, name) is not None and not getattr(opts, name) > 0:
            raise Err(f'--{name.replace("_", "-")} must be positive')
    if opts.path_root is not None and '://' not in opts.path_root and not os.path.isdir(opts.path_root):
        raise Err(f'--path-root {opts.path_root} is not a folder')
    if opts.precision is not None and opts.precision not in PRECISION_DTYPES:
        raise Err(f'--precision must be one of {sorted(PRECISION_DTYPES)}, got {opts.precision!r}')
    configs = []
    for spec in opts.model_specs():
        if spec.checkpoint is not None and '://' not in spec.checkpoint and not os.path.isfile(spec.checkpoint):
            raise FileNotFoundError(f'checkpoint not found: {spec.checkpoint}')
        if isinstance(spec.config, str):  # (a Config object is already loaded)
            if not os.path.isfile(spec.config):
                raise FileNotFoundError(f'config not found: {spec.config}')
            # mmengine's config only (no torch, custom imports not run): what inference needs is registered later
            configs.append(load_config_file(spec.config, import_custom_modules=False))
        else:
            configs.append(spec.config)
    catalog.check_output_folder(opts.output)
    return configs


def prepare(opts: ScoreOptions, configs: Optional[Sequence[Any]] = None) -> ScoringJob:
    """All checks that need no Ray. ``configs``: what :func:`preflight` returned for ``opts`` (it runs here when
    not given). Raises FileNotFoundError, ConfigLoadError, CheckpointMismatchError or ScoringSetupError."""
    Err = catalog.ScoringSetupError
    if configs is None:
        configs = preflight(opts)
    models = [_prepare_model(spec, opts, config) for spec, config in zip(opts.model_specs(), configs)]
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


def _prepare_model(spec: ModelSpec, opts: ScoreOptions, config) -> JobModel:
    """One model's up-front checks (``config``: the spec's config as :func:`preflight` loaded it): task, checkpoint
    (exact key/shape check, digest), calibration, prefix. A trace of the same checkpoint, config and code in the
    graph cache (:mod:`numclip_mm.batch.graph_cache`) is used as it is: the model is neither built nor traced."""
    from numclip_mm.conformal import SIDECAR_SUFFIX
    from numclip_mm.inference import describe_model, load_config, read_checkpoint_bytes
    Err = catalog.ScoringSetupError
    raw_config = config
    if spec.checkpoint is None:
        config = load_config(config)  # task applied, inference components registered
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
    # the checkpoint travels once here: a local copy (URIs), its digest, the key/shape check and the calibration;
    # actors get the model's graph (or the digest: they then load exactly the bytes that have it) and the
    # checked calibration
    checkpoint_sha256, calibration, calibration_digest, checkpoint_bytes = None, None, None, 0
    graph, graph_note, graph_source = None, _graph_unwanted(opts), ''
    cache = _graph_cache(opts) if spec.checkpoint is not None and not graph_note else None
    with catalog.local_copy(spec.checkpoint, companions=(SIDECAR_SUFFIX,) if opts.intervals else ()) as local:
        data, key, cached = [None], None, None  # (a list: the build takes the bytes out, frees them once built)
        if cache is not None:  # one read of the checkpoint: its digest keys the cache, a miss builds from it
            data[0] = read_checkpoint_bytes(local)
            checkpoint_sha256 = bytes_digest(data[0])
            key = cache.key(_config_digest(raw_config), checkpoint_sha256, _custom_imports(raw_config))
            cached = _cached_graph(cache, key)
        if cached is not None:  # built, checked and traced by an earlier job from these very bytes and this config
            graph, model = cached
            config = _task_applied(raw_config)
            graph_source = f'the graph cache ({cache.root})'
        else:
            if spec.checkpoint is not None:
                config = load_config(config)
            if graph_note:
                model = describe_model(config, local)  # exact key/shape check on a skeleton
                if spec.checkpoint is not None:
                    checkpoint_sha256 = file_digest(local)
            else:  # the model itself, from one read of the checkpoint (exact key/shape check), then its trace
                graph, graph_note, model, checkpoint_sha256 = _trace_model(config, local, data.pop(),
                                                                             checkpoint_sha256)
                if graph is not None and key is not None:
                    cache.put(key, graph)
                    graph_source = f'traced now, kept in the graph cache ({cache.root})'
        del data
        if spec.checkpoint is not None:
            checkpoint_digest = checkpoint_sha256
            checkpoint_bytes = os.path.getsize(local)
        if opts.intervals:
            calibration, calibration_digest = _check_calibration(opts, spec.checkpoint, local, checkpoint_sha256)
    task = model['task']
    prefix = f'{task.name}_' if spec.prefix is None else spec.prefix
    names = output_columns(prefix, opts.keep_raw_value, opts.intervals, opts.embedding)
    identity = dict(config=_config_digest(config), checkpoint=checkpoint_digest)
    if calibration_digest is not None:  # new thresholds give other bounds: outputs of the old ones are stale
        identity['calibration'] = calibration_digest
    return JobModel(config, spec.checkpoint, prefix, task.name, model['input_size'], identity, names,
                    checkpoint_sha256, calibration, checkpoint_bytes, graph, graph_note,
                    graph_source or ('traced now' if graph is not None else ''))


def _graph_cache(opts: ScoreOptions):
    from .graph_cache import GraphCache, cache_root
    root = cache_root(opts.graph_cache)
    return GraphCache(root) if root else None


def _custom_imports(config) -> List[str]:
    return list((config.get('custom_imports') or {}).get('imports', []))


def _task_applied(config):
    """The config as :func:`numclip_mm.inference.load_config` returns it, without registering (importing) the
    model stack: what the job's identity digests."""
    import copy

    from numclip_mm.tasks import apply_config_task
    cfg = copy.deepcopy(config)
    apply_config_task(cfg)
    return cfg


def _cached_graph(cache, key: Optional[str]):
    """(archive, dict(task, input_size)) of the trace cached under ``key`` (:meth:`GraphCache.key`: checkpoint
    digest, config, code), else None."""
    from numclip_mm.prediction_graph import graph_metadata
    from numclip_mm.tasks import OrdinalTask
    archive = cache.get(key) if key is not None else None
    if archive is None:
        return None
    meta = graph_metadata(archive)
    return archive, dict(task=OrdinalTask(**meta['task']), input_size=tuple(meta['input_size']))


def _graph_unwanted(opts: ScoreOptions) -> str:
    """Why the driver does not trace the models ('' when it does): switched off, or inference on GPUs, where
    actors build the models (their autocast is what the GPU path measures; a trace made in fp32 keeps its
    dtype casts at fp32)."""
    import torch
    if not opts.graph:
        return 'switched off (--no-graph)'
    if (opts.num_gpus_per_actor or 0) > 0 or (opts.num_gpus_per_actor is None and torch.cuda.is_available()):
        return 'inference on GPUs'
    return ''


def _trace_model(config, checkpoint: Optional[str], data: Optional[bytes] = None, sha256: Optional[str] = None):
    """(graph or None, why none, dict(task, input_size), the checkpoint's sha256): the model loaded from one read of
    the checkpoint (the read that is hashed; ``data``: those bytes, already read, and their ``sha256``) and traced
    (:meth:`numclip_mm.inference.Predictor.trace`)."""
    from numclip_mm.inference import GraphTraceError, Predictor, read_checkpoint_bytes
    if checkpoint is not None and data is None:
        data = read_checkpoint_bytes(checkpoint)
        sha256 = bytes_digest(data)
    # the calibration is the scorer's own check (with --interval); a sidecar is not looked for here
    predictor = Predictor(config, checkpoint, calibration=False, checkpoint_sha256=sha256, checkpoint_data=data)
    del data
    model = dict(task=predictor.task, input_size=predictor.input_size)
    try:
        return predictor.trace(), '', model, sha256
    except GraphTraceError as err:
        logger.warning('%s: actors build the model themselves (it cannot be traced: %s)', _name(config), err)
        return None, f'cannot be traced: {err}', model, sha256


def _check_calibration(opts: ScoreOptions, checkpoint: Optional[str], local_checkpoint: Optional[str],
                       checkpoint_sha256: Optional[str]):
    """Refuse intervals the checkpoint's calibration cannot give (before any work); returns the calibration and
    its file's sha256. ``local_checkpoint`` is the checkpoint's local copy, its sidecar beside it
    (:func:`catalog.local_copy`)."""
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
        calibration = check_calibration(sidecar, local_checkpoint, opts.intervals, checkpoint_sha256)
    except (KeyError, ValueError) as err:
        raise Err(f'--interval: {str(err).strip(chr(34) + chr(39))}') from None
    return calibration, file_digest(sidecar)


# ----------------------------------------------------------------------------------------------------------------
# the Ray side

def ensure_ray(opts: ScoreOptions) -> Optional[RayStarter]:
    """Connect to (or start) Ray unless it already runs in this process. Returns the starter to close when this
    call started it, else None. Raises :class:`numclip_mm.batch.cluster.RayUnavailable` (within
    ``CONNECT_TIMEOUT_S``) when the cluster's address does not answer."""
    import ray
    if ray.is_initialized():
        return None
    starter = RayStarter(opts.address, opts.num_cpus, opts.object_store_memory).start()
    try:
        starter.wait()
    except BaseException:
        starter.close()
        raise
    return starter


SMALL_JOB_ITEMS = 16   # a local job with fewer row groups to score has them cut into slices, up to this many items
MIN_SLICE_ROWS = 128   # ... of at least this many rows (two CPU batches)


def item_rows(plans: Sequence[catalog.FilePlan]) -> Optional[int]:
    """Rows per work item, None for whole row groups. A small job's few row groups are sliced so that the actors
    (and the driver's head start) share the work evenly to the end: 4 row groups of 300 large JPEGs left an actor idle
    while another, or the driver, scored the last one. Each slice reads its whole row group's column again, a cost
    only on local files (read from the page cache) and for few row groups; object stores are never read twice."""
    groups = [n for p in plans for n in p.row_group_rows if n]
    local = all('://' not in p.input or p.input.startswith('file://') for p in plans)
    if not local or len(groups) >= SMALL_JOB_ITEMS:
        return None
    return max(MIN_SLICE_ROWS, -(-sum(groups) // SMALL_JOB_ITEMS))


def work_items(plans: Sequence[catalog.FilePlan], rows: Optional[int] = None) -> List[Dict[str, Any]]:
    """The units of a read + decode task: one item per (file, non-empty row group), or its slices of about
    ``rows`` rows (``start``/``stop`` inside the row group; :func:`item_rows`)."""
    items = []
    for index, plan in enumerate(plans):
        offset = 0
        for group, n in enumerate(plan.row_group_rows):
            k = max(1, -(-n // rows)) if rows else 1
            bounds = [n * i // k for i in range(k + 1)]
            items += [dict(file=index, path=plan.input, row_group=group, offset=offset, start=a, stop=b)
                      for a, b in zip(bounds, bounds[1:]) if b > a]
            offset += n
    return items


def plan_sizing(job: ScoringJob, resources: Dict[str, float], num_work_items: int) -> Sizing:
    """Actors x threads for the cluster's ``resources`` (:func:`numclip_mm.batch.cluster.cluster_resources`) and the
    job's ``num_work_items`` (row groups, or their slices, to score) (:func:`numclip_mm.batch.cluster.size_pipeline`);
    the options the user gave are kept."""
    opts = job.opts
    checkpoint_bytes = sum(m.checkpoint_bytes for m in job.models)  # every model lives in each actor
    return size_pipeline(resources, num_actors=opts.num_actors, cpus_per_actor=opts.cpus_per_actor,
                         num_gpus_per_actor=opts.num_gpus_per_actor, torch_threads=opts.torch_threads,
                         decode_in_actor=opts.decode_in_actor, cpus_per_decode_task=opts.cpus_per_decode_task,
                         batch_size=opts.batch_size, actor_memory=ACTOR_BASE_MEMORY + 3 * checkpoint_bytes,
                         work_items=num_work_items)


def prediction_block_bytes(batch_size: int, intervals: Sequence[float] = (), prefixes: Sequence[str] = ('',),
                           embedding: bool = False) -> int:
    """Ray Data's target block size for the actors' output: a little under one batch's prediction columns, so that
    every inference batch leaves the actor as its own block at once (Ray Data otherwise gathers a work item's small
    outputs up to 128 MiB: the first prediction would wait for a whole row group)."""
    per_row = sum(4 if pa.types.is_string(f.type) else 2 * 512 if f.type == EMBEDDING_TYPE else f.type.bit_width // 8
                  for f in prediction_schema(intervals, prefixes, embedding))
    return max(1024, int(0.8 * batch_size * per_row))


def decoded_block_bytes(batch_size: int, input_sizes: Sequence[Optional[Sequence[int]]]) -> int:
    """Ray Data's target block size for decode tasks feeding the actors (the GPU layout): a little over one batch
    of preprocessed CHW uint8 inputs (one per distinct model input; 224x224 where a model does not say) and its row
    tags. Under it, Ray Data cuts every decoded batch into one block per row: on a GPU machine (ViT-B/16, 224 px)
    20,000 images became 20,000 objects for the driver to schedule and the actor to re-assemble, and the scorer ran
    at a quarter of a plain DataLoader loop (docs/benchmarks.md)."""
    per_row = sum(3 * int(h) * int(w) for h, w in (tuple(s or (224, 224)) for s in input_sizes)) + 32
    return int(1.25 * batch_size * per_row)


def stream_buffer_blocks(largest_row_group: int, batch_size: int, cap: int = 64) -> int:
    """Blocks an actor may yield before the driver has taken them (Ray Data's streaming-generator buffer): a whole
    row group's (one per batch), at most ``cap``. Each block is one batch's prediction columns, a few KB. Ray Data's
    default, 2, paused each actor whenever the driver's collection lagged: on a 2-core machine the actors were busy
    0.77 of the time on 64 px PNGs, 0.90 with 32 (docs/benchmarks.md has the rates)."""
    return max(2, min(cap, -(-largest_row_group // batch_size)))


def _row_decoder(job: ScoringJob, preprocessors, batch_size: int, first_batch: Optional[int] = None
                 ) -> RowGroupDecoder:
    opts = job.opts
    return RowGroupDecoder(CellDecoder(preprocessors, job.source.kind, opts.max_image_bytes, opts.max_image_pixels,
                                       _absolute(opts.path_root), os.getcwd(), opts.read_timeout),
                           job.column, batch_size, first_batch)


FIRST_BATCH_ROWS = 8  # each in-process thread's first batch: its first predictions after 8 images, not 64


def build_dataset(job: ScoringJob, items: Sequence[Dict[str, Any]], sizing: Sizing, actor_class=None,
                  claims: Optional[str] = None):
    """The lazy Ray Dataset of prediction columns (numclip_mm.batch.columns.prediction_schema) for the work
    ``items`` (:func:`work_items` of the files to score); ``actor_class``: the ``map_batches`` class that infers
    (default :class:`~numclip_mm.batch.actor.InferenceActor`, or a subclass of it); ``claims``: the folder of the
    job's :class:`~numclip_mm.batch.claims.WorkClaims` when the driver scores items too (the actors skip those)."""
    import ray

    from numclip_mm.inference import ImagePreprocessor

    from .actor import InferenceActor
    actor_class = actor_class or InferenceActor
    opts = job.opts
    gpu = bool(sizing.gpus_per_actor)
    batch_size, in_actor = sizing.batch_size, sizing.decode_in_actor
    preprocessors = None
    if not in_actor:  # decode tasks bring each distinct model input once (actors bring their own otherwise)
        preprocessors, _ = group_preprocessors([ImagePreprocessor(m.config, m.input_size) for m in job.models])
    row_decoder = _row_decoder(job, preprocessors, batch_size)
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    if not in_actor:
        ds = ds.map_batches(row_decoder, batch_size=1, batch_format='numpy', num_cpus=sizing.cpus_per_decode_task,
                            max_retries=opts.max_retries)
    remote = dict(num_cpus=sizing.cpus_per_actor, max_restarts=opts.max_retries, max_task_retries=opts.max_retries)
    if gpu:
        remote['num_gpus'] = sizing.gpus_per_actor
    ds = ds.map_batches(
        actor_class, batch_format='numpy', batch_size=1 if in_actor else batch_size,
        compute=ray.data.ActorPoolStrategy(size=sizing.num_actors),
        fn_constructor_kwargs=dict(models=[m.actor_spec(None if gpu or m.graph is None else ray.put(m.graph))
                                           for m in job.models], device='cuda' if gpu else 'cpu',
                                   precision=opts.precision, torch_threads=sizing.torch_threads,
                                   row_decoder=row_decoder if in_actor else None, intervals=opts.intervals,
                                   embedding=opts.embedding, **(dict(claims=claims) if claims else {})),
        **remote)
    ctx = ds.context  # this dataset's own context (a copy): nothing leaks into the caller's other datasets
    ctx.execution_options.preserve_order = True  # not needed for correctness (rows are tagged); bounds buffering
    ctx.target_max_block_size = prediction_block_bytes(batch_size, opts.intervals, [m.prefix for m in job.models],
                                                    opts.embedding)
    if not in_actor:  # one context for both stages: the decode tasks' blocks are the larger
        ctx.target_max_block_size = max(ctx.target_max_block_size,
                                        decoded_block_bytes(batch_size, [p.input_size for p in preprocessors]))
    ctx.enable_progress_bars = False  # the driver logs its own progress (rows/s, ETA, files)
    if in_actor:  # an actor yields a block per batch of its row group: let it run ahead of the driver's collection
        ctx._max_num_blocks_in_streaming_gen_buffer = stream_buffer_blocks(
            max((n for p in job.plans for n in p.row_group_rows), default=0), batch_size)
    return ds


def _models_loaded_as(job: ScoringJob, sizing: Optional[Sizing]) -> str:
    """What the actors (``sizing``; None: the in-process engine) load, for the first log lines: the driver's traces,
    or models built from their files."""
    if sizing is not None and sizing.gpus_per_actor:
        return 'config and checkpoint, building the model (inference on GPUs)'
    traced = [m.prefix + '*' for m in job.models if m.graph is not None]
    built = '; '.join(f'{m.prefix}*: {m.graph_note}' for m in job.models if m.graph is None)
    if not built:
        return 'the driver\'s TorchScript trace of the model' + ('s' if len(job.models) > 1 else '')
    if not traced:
        return f'config and checkpoint, building the model ({built})'
    return f'the driver\'s TorchScript traces of {", ".join(traced)}; config and checkpoint for the others ({built})'


def _absolute(path_root: Optional[str]) -> Optional[str]:
    """A local --path-root made absolute here, on the driver (workers run in other folders)."""
    return path_root if not path_root or '://' in path_root else os.path.abspath(path_root)


def run(job: ScoringJob, actor_class=None, ray_starter: Optional[RayStarter] = None,
        started_at: Optional[float] = None, engine: Optional[Engine] = None) -> Dict[str, Any]:
    """Score the plan's pending files. Returns a summary (also logged); raises ScoringFailed when files failed.

    ``actor_class``: see :func:`build_dataset`. ``ray_starter``: Ray already being started in the background
    (:class:`RayStarter`; the command line starts it
    before :func:`prepare` so the two overlap); closed here. ``started_at``: ``time.time()`` of the command's start,
    from which ``first_output_s`` (the first prediction back in the driver) is counted (default: this call).
    ``engine``: Ray or the driver's threads (default: :func:`numclip_mm.batch.engine.choose_engine`)."""
    opts = job.opts
    if engine is None:
        engine = choose_engine(opts, actor_class)
    report: Dict[str, Any] = dict(
        image_column=dict(column=job.source.column, kind=job.source.kind, reason=job.source.reason),
        models=[dict(prefix=m.prefix, task=m.task_name, config=_name(m.config), checkpoint=m.checkpoint,
                     columns=list(m.names.values()), graph=m.graph_source or m.graph_note) for m in job.models],
        columns=list(job.names), files=[], failed=[], unscored_files=job.unscored, ignored_files=job.ignored,
        resume=RESUME_RULE, engine=dict(name=engine.name, reason=engine.reason))
    logger.info('engine: %s (%s)', 'threads of this process, no Ray' if engine.name == 'in-process' else 'Ray',
                engine.reason)
    logger.info('image column %r (%s cells): %s', job.source.column, job.source.kind, job.source.reason)
    for m in job.models:
        if m.graph is not None:
            logger.info('%sgraph: %s', f'{m.prefix}* ' if len(job.models) > 1 else '', m.graph_source)
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
    origin = start - (time.time() - started_at) if started_at is not None else start
    report['started_at'] = started_at if started_at is not None else time.time()
    head = None
    try:
        if pending:
            items = work_items(pending, item_rows(pending))  # one list: the driver and the actors claim by its names
            if engine.name == 'in-process':
                _score_in_process(job, pending, items, report, origin, engine.cpus)
            else:
                head = _start_head_start(job, items, ray_starter, actor_class, report)
                if ray_starter is not None:
                    ray_starter.wait()
                else:
                    ray_starter = ensure_ray(opts)
                report['ray_ready_s'] = time.perf_counter() - origin
                _score(job, pending, items, report, origin, ray_starter, actor_class, head)
    finally:
        if head is not None:
            head.abort()  # (already finished on success)
            head.join(HEAD_START_JOIN_S)
            head.claims.remove()
        if ray_starter is not None:
            ray_starter.close()
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


HEAD_START_JOIN_S = 10.0  # a job that is stopped waits this long for the driver's scoring thread (a daemon) to let
#                          go: it stops between two batches and delivers nothing after the stop


def _head_start_unwanted(job: ScoringJob, ray_starter: Optional[RayStarter], actor_class) -> str:
    """Why the driver does not score while the actors start ('' when it does): it needs every model's graph
    (CPU inference), actors that decode their own row groups and accept claims (the stock InferenceActor), and
    actors on this machine (a private instance: the claims are files, and a cluster's driver may be a small
    machine that is not one of its nodes)."""
    from .actor import InferenceActor
    opts = job.opts
    if not opts.head_start:
        return 'switched off (--no-head-start)'
    if actor_class not in (None, InferenceActor):
        return 'a custom actor class'
    if any(m.graph is None for m in job.models):
        return 'the actors build the models (no graph)'
    if opts.decode_in_actor is False or opts.num_gpus_per_actor:
        return 'decode tasks feed the actors'
    if ray_starter is not None:
        private = ray_starter.starts_private_instance()
    else:
        import ray
        private = ray.is_initialized() and ray._private.worker._global_node is not None  # this process's instance
    return '' if private else 'the actors run on a Ray cluster'


def _start_head_start(job: ScoringJob, items: List[Dict[str, Any]], ray_starter: Optional[RayStarter],
                      actor_class, report: Dict[str, Any]) -> Optional[HeadStart]:
    """The driver's scoring thread (:mod:`numclip_mm.batch.head_start`) over the job's work ``items``, started;
    None when unwanted."""
    why_not = _head_start_unwanted(job, ray_starter, actor_class)
    report['head_start'] = dict(used=not why_not, **({'why_not': why_not} if why_not else {}))
    if why_not:
        return None
    claims = WorkClaims.create()
    logger.info('the driver scores work items from the back of the list until the actors\' first predictions '
                'arrive (--no-head-start: only the actors score)')
    return HeadStart(lambda: _driver_actor(job, claims), items, claims).start()


def _driver_actor(job: ScoringJob, claims: WorkClaims):
    """The driver's own InferenceActor: the actors' graphs and decoding, one torch thread (Ray's daemons and the
    actors' imports need the other cores meanwhile)."""
    from .actor import InferenceActor
    opts = job.opts
    return InferenceActor([m.actor_spec(m.graph) for m in job.models], precision=opts.precision, torch_threads=1,
                          row_decoder=_row_decoder(job, None, opts.batch_size or CPU_BATCH_SIZE),
                          intervals=opts.intervals, embedding=opts.embedding, claims=claims.root, claim_as=DRIVER)


def _score_in_process(job: ScoringJob, pending: List[catalog.FilePlan], items: List[Dict[str, Any]],
                      report: Dict[str, Any], origin: float, cpus: int) -> None:
    """The in-process engine (:mod:`numclip_mm.batch.in_process`): ``cpus`` threads of one torch thread each (or
    ``--torch-threads``) over one copy of each model; a work item that cannot be scored at all fails its file."""
    import torch

    from .actor import InferenceActor, load_predictor
    opts = job.opts
    threads = max(1, cpus // (opts.torch_threads or 1))
    batch_size = opts.batch_size or CPU_BATCH_SIZE
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(opts.torch_threads or 1)  # (process-wide: every scoring thread gets this many)
    writers = ThreadWriters(opts.max_writes_in_flight)
    report.update(sizing=dict(threads=threads, torch_threads=opts.torch_threads or 1, batch_size=batch_size),
                  models_loaded_as=_models_loaded_as(job, None), outputs_written_by='the driver\'s threads')
    logger.info('scoring with %d threads x %d torch thread(s), batches of %d, one copy of each model (%s); %d work '
                'items to score', threads, opts.torch_threads or 1, batch_size, report['models_loaded_as'], len(items))
    try:
        predictors = [load_predictor(m.config, m.checkpoint, 'cpu', opts.precision, m.checkpoint_sha256,
                                     m.calibration, m.graph) for m in job.models]

        def make_actor():
            return InferenceActor.sharing(predictors, [m.prefix for m in job.models],
                                          row_decoder=_row_decoder(job, None, batch_size, FIRST_BATCH_ROWS),
                                          intervals=opts.intervals, embedding=opts.embedding)
        collection = Collection(job, pending, report, writers, origin)
        scorer = InProcessScorer(make_actor, items, threads)

        def failed(err: ItemFailed) -> None:
            collection.fail_file(err.file_index, error_text(last_error_line(str(err))), 'its work item failed')
        scorer.run(lambda table: collection.deliver(table, time.perf_counter(), 'in-process'), failed)
        collection.drain()
        collection.check_complete()
    except BaseException:  # a failure or a signal: writes in flight stop and remove their temporaries
        writers.close(cancel=True)
        raise
    finally:
        torch.set_num_threads(torch_threads)
    writers.close()


def _score(job: ScoringJob, pending: List[catalog.FilePlan], items: List[Dict[str, Any]], report: Dict[str, Any],
           origin: float, ray_starter: Optional[RayStarter], actor_class=None,
           head: Optional[HeadStart] = None) -> None:
    opts = job.opts
    # a private instance runs on this machine: the driver writes (numclip_mm.batch.writers says why)
    writers = (ThreadWriters(opts.max_writes_in_flight) if ray_starter is not None and ray_starter.private
               else RayWriters(opts.max_writes_in_flight, opts.max_retries))
    try:
        _score_with(writers, job, pending, items, report, origin, ray_starter, actor_class, head)
    except BaseException:  # a failure or a signal: writes in flight stop and remove their temporaries
        if head is not None:  # (its deliveries submit writes: it lets go first)
            head.abort()
            head.join(HEAD_START_JOIN_S)
        writers.close(cancel=True)
        raise
    writers.close()


def _score_with(writers, job: ScoringJob, pending: List[catalog.FilePlan], items: List[Dict[str, Any]],
                report: Dict[str, Any], origin: float, ray_starter: Optional[RayStarter], actor_class=None,
                head: Optional[HeadStart] = None) -> None:
    opts = job.opts
    resources = cluster_resources()
    sizing = plan_sizing(job, resources, len(items))
    models = _models_loaded_as(job, sizing)
    logger.info('Ray: %s, %g CPUs and %g GPUs available (ready %.1f s after start); scoring with %s (%d work items '
                'to score); actors load %s; outputs written by %s', ray_starter.describe() if ray_starter else 'the '
                'Ray instance already running in this process', resources['CPU'], resources['GPU'],
                report['ray_ready_s'], sizing.describe(), len(items), models, writers.where)
    report['sizing'] = dict(vars(sizing))
    report['models_loaded_as'] = models
    report['outputs_written_by'] = writers.where
    ds = build_dataset(job, items, sizing, actor_class, claims=head.claims.root if head is not None else None)
    collection = Collection(job, pending, report, writers, origin)
    deliver = collection.deliver

    if head is not None:
        head.attach(lambda table: deliver(table, head.first_output if 'first_output_s' not in report
                                          else time.perf_counter(), 'the driver\'s, while the actors start'))
    # an explicit iterator, closed in every case: its executor (actors, threads) stops while Ray is still up, also
    # when a signal unwinds this frame (an abandoned one would call into Ray after shutdown: abort at exit)
    stream = iter(ds.iter_batches(batch_format='pyarrow', batch_size=None, prefetch_batches=2))
    streamed = False
    try:
        for table in stream:
            if not table.num_rows:
                continue
            if 'actors_first_output_s' not in report:
                report['actors_first_output_s'] = time.perf_counter() - origin
                if head is not None:  # the actors now use every CPU: the driver finishes its item and stops
                    head.stop()
                    logger.info('the actors\' first predictions back %.1f s after the start; the driver scored %d '
                                'work items until then', report['actors_first_output_s'], head.scored_items)
            deliver(table, time.perf_counter(), 'the actors\'')
        streamed = True
    except ScoringFailed:
        raise
    except Exception as err:  # noqa: BLE001  (Ray's bounded retries are exhausted: end the job with a message)
        if head is not None:  # (it delivers under the lock; what it has delivered is written)
            head.abort()
            head.join(HEAD_START_JOIN_S)
        collection.drain()
        _drop_frames(err)
        kept = f'{len(report["files"])} files are complete and kept; run the same command again to continue.'
        changed = _checkpoint_changed(err)
        if changed:
            raise ScoringFailed(f'{changed} ({kept})', report) from err
        if _actor_start_failed(err):  # e.g. the checkpoint was deleted since planning: not a memory problem
            raise ScoringFailed(f'the inference actors could not start: {error_text(last_error_line(str(err)))}. '
                                f'{kept}', report) from err
        raise ScoringFailed(
            f'scoring stopped after {opts.max_retries} retries of a failing worker ({type(err).__name__}: '
            f'{error_text(last_error_line(str(err)))}). A worker that dies again and again is usually out of '
            f'memory: lower --batch-size or --max-image-pixels, or give actors more memory. {kept}',
            report) from err
    finally:
        prefetcher = _block_prefetcher(stream)  # (the generator's frame is gone once it is closed)
        close = getattr(stream, 'close', None)
        if close is not None:
            close()
        _stop_block_prefetcher(prefetcher)
        # Ray Data releases actors by reference count; a failed or interrupted execution's objects hold them in
        # reference cycles until the collector runs (a finished one releases them itself)
        if not streamed:
            gc.collect()
    if head is not None:
        head.stop()
        head.join()  # its last item (nobody else scores it)
        report['head_start'].update(items=head.scored_items, rows=head.rows)
        if head.error is not None:
            _head_start_failed(head, collection)
    collection.drain()
    collection.check_complete()


def _block_prefetcher(stream):
    """The block prefetcher of a ``Dataset.iter_batches`` stream: Ray 2.60's WaitBlockPrefetcher, held by the
    BatchIterator in the stream's suspended generator frame; None before the first batch (none exists yet) or when
    Ray Data is laid out otherwise."""
    frame = getattr(stream, 'gi_frame', None)
    batch_iterator = frame.f_locals.get('batch_iterator') if frame is not None else None
    return getattr(batch_iterator, '_prefetcher', None)


def _stop_block_prefetcher(prefetcher, timeout: float = 5.0) -> None:
    """Stop a stream's block prefetcher thread. It stops itself only at the end of a complete iteration, so a
    stream closed early (a signal, a failure) keeps it running for the life of the process, and it calls
    ``ray.wait`` when woken: if that happens while Ray shuts down, Ray's core worker ends the whole process (exit 1,
    "The core worker has already been shutdown"; seen in one of about 17 stopped runs). Only this stream's
    prefetcher is stopped: another job's in the same process keeps its own."""
    stop = getattr(prefetcher, 'stop', None)
    if callable(stop):
        stop()
        thread = getattr(prefetcher, '_thread', None)
        if isinstance(thread, threading.Thread) and thread.is_alive():
            thread.join(timeout)


def _head_start_failed(head: HeadStart, collection: Collection) -> None:
    """The driver's scoring thread failed on an item it had claimed (the actors skipped it): that file fails
    like a failed write (the others are written; the next run scores it again)."""
    err = head.error
    msg = error_text(last_error_line(f'{type(err).__name__}: {err}'))
    if head.failed_file is None or head.failed_file not in collection.buffers:  # before any item: the actors scored
        logger.warning('the driver\'s head start stopped: %s', msg)      # them all
        return
    collection.fail_file(head.failed_file, msg, 'while the driver scored it')


def _drop_frames(err: BaseException) -> None:
    """Detach the tracebacks of a Ray Data failure and of the exceptions it chains: their frames (the executor's
    scheduling loop, its task callbacks) hold this job's actor handles, and Ray Data releases actors by reference
    count, so a caller keeping the exception (``except ScoringFailed as e``, a notebook's last error) would keep
    the job's actors, and every CPU they hold, alive. Messages (with the remote traceback text) are kept."""
    todo, seen = [err], set()
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        err.__traceback__ = None
        todo += [err.__cause__, err.__context__]


def _name(config) -> str:
    """A config as the summary names it: its file, or 'Config object'."""
    return config if isinstance(config, str) else getattr(config, 'filename', None) or 'Config object'


def _checkpoint_changed(err: BaseException) -> Optional[str]:
    """The message of a :class:`numclip_mm.inference.CheckpointChangedError` raised in an actor, as Ray reports
    it (inside an actor-died or task error), else None."""
    text = str(err)
    marker = 'CheckpointChangedError: '
    if marker not in text:
        return None
    return text[text.index(marker) + len(marker):].strip().splitlines()[0]


def _actor_start_failed(err: BaseException) -> bool:
    """Whether Ray ended the job because an actor's constructor raised (Ray does not restart those)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if getattr(err, 'actor_init_failed', False) or 'raised in its creation task' in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def score_catalog(opts: ScoreOptions = None, actor_class=None, **kwargs) -> Dict[str, Any]:
    """Check everything up front, then score. ``score_catalog(config=..., checkpoint=..., input=..., output=...)``;
    ``actor_class``: see :func:`build_dataset`."""
    opts = opts or ScoreOptions(**kwargs)
    return run(prepare(opts), actor_class)


__all__ = ['ModelSpec', 'ScoreOptions', 'ScoringFailed', 'ScoringJob', 'prepare', 'run', 'score_catalog']
