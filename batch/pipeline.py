"""The Ray Data scoring graph, and the driver loop that turns its output into one Parquet file per input file.

::

    from_items(one work item per (input file, row group))
      -> map_batches(ReadDecode)  read that row group's image/path column, decode + test transforms,
                                  yield slices tagged (file index, row index, CRC of the cell)   Ray CPU tasks
                                  (bad rows: error message + placeholder tensor)
      -> map_batches(InferenceActor, ActorPoolStrategy(size))   one Predictor per actor; flagged rows get null
                                  predictions; the tensors are dropped here                       Ray actors
      -> iter_batches on the driver: small prediction columns only, buffered per file
    driver: when all rows of a file are in, sort them by row index, stream the input file's row groups again,
            append the prediction columns, write ``<out>/.numclip-tmp-*-<name>``, rename to ``<out>/<name>``.

Row order: every prediction carries its (file, row) index, so output files have exactly the input's rows in the
input's order whatever order Ray finishes the work in (``preserve_order`` is still set, which keeps the number of
half-finished files, and so the driver's buffers, small). The CRC of each image/path cell is compared with the
input row when writing: a file that changed during the run is not committed.
Memory: all stages stream (Ray Data's backpressure bounds the object store); only prediction columns travel back
to the driver (tens of bytes per row); the driver holds one input row group at a time while writing.
Resume: files whose complete output exists are not read at all; a killed job leaves only ``.numclip-tmp-*``
files, which the next run removes.
"""
import gc
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import catalog
from .decode import ERROR, FILE, FP, ROW, TENSOR, Decoder, ReadDecode, fingerprints

logger = logging.getLogger('batch')

VALUE, LABEL, PROBABILITY, ERROR_OUT = 'value', 'label', 'probability', 'error'
OUTPUT_TYPES = {VALUE: pa.float64(), LABEL: pa.string(), PROBABILITY: pa.float64(), ERROR_OUT: pa.string()}


def output_columns(prefix: str) -> Dict[str, str]:
    """Suffix -> column name, e.g. {'value': 'age_value', ...}."""
    return {k: f'{prefix}{k}' for k in OUTPUT_TYPES}


@dataclass
class ScoreOptions:
    config: Any                            # config path or mmengine Config
    checkpoint: Optional[str]
    input: str
    output: str
    image_column: Optional[str] = 'image'
    path_column: Optional[str] = None
    prefix: Optional[str] = None           # default: '{task.name}_'
    batch_size: int = 64
    num_actors: int = 1
    num_gpus_per_actor: float = 0
    cpus_per_actor: float = 0.5
    cpus_per_decode_task: float = 1
    torch_threads: Optional[int] = None    # torch.set_num_threads in each actor (default: Ray's OMP setting)
    max_image_bytes: Optional[int] = None
    path_root: Optional[str] = None        # relative paths in the path column are resolved against this folder
    overwrite: bool = False
    address: Optional[str] = None         # None: RAY_ADDRESS or a local instance; 'auto', 'ray://...'
    num_cpus: Optional[int] = None         # only for a local ray.init
    object_store_memory: Optional[int] = None  # only for a local ray.init


# ----------------------------------------------------------------------------------------------------------------
# checkpoint access (an adapter: Predictor takes a local path; a URI is copied to a local temporary file first)

def local_checkpoint(checkpoint: Optional[str]) -> Optional[str]:
    if checkpoint is None or '://' not in checkpoint or checkpoint.startswith('file://'):
        return checkpoint[len('file://'):] if checkpoint and checkpoint.startswith('file://') else checkpoint
    import fsspec
    fd, local = tempfile.mkstemp(suffix='-' + os.path.basename(checkpoint))
    os.close(fd)
    try:
        with fsspec.open(checkpoint, 'rb') as src, open(local, 'wb') as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
    except FileNotFoundError:
        os.unlink(local)
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}') from None
    return local


def load_config(config):
    """A self-contained Config (bases merged), so that workers need not see the config file."""
    from numclip_mm.inference import load_config as load
    return load(config)


def load_predictor(config, checkpoint, device='cpu'):
    from numclip_mm.inference import Predictor
    local = local_checkpoint(checkpoint)
    try:
        return Predictor(config, local, device=device)
    finally:
        if local != checkpoint and local is not None and os.path.exists(local):
            os.unlink(local)


class InferenceActor:
    """One Predictor per actor, built once; ``__call__`` maps a decoded batch to prediction columns.

    Rows flagged by the decoder get null predictions and keep their error. The tensor column is not returned.
    """

    def __init__(self, config, checkpoint, device='cpu', torch_threads=None):
        import torch
        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        self.predictor = load_predictor(config, checkpoint, device)

    def __call__(self, batch: Dict[str, np.ndarray]) -> pa.Table:
        import torch
        errors = list(batch[ERROR])
        n = len(errors)
        ok = np.array([e is None for e in errors], dtype=bool)
        value, prob = np.zeros(n), np.zeros(n)
        label = np.full(n, None, dtype=object)
        if ok.any():
            tensors = batch[TENSOR][ok]
            if tensors.dtype == object:  # variable-shaped
                inputs = [torch.from_numpy(np.ascontiguousarray(t)) for t in tensors]
            else:
                inputs = torch.from_numpy(np.ascontiguousarray(tensors))
            try:
                out = self.predictor.predict_tensors(inputs)
                value[ok], prob[ok], label[ok] = out['value'], out['probability'], out['label']
            except Exception as err:  # noqa: BLE001  (one bad batch must not kill the job: report it per row)
                msg = f'inference failed: {type(err).__name__}: {err}'
                for i in np.flatnonzero(ok):
                    errors[i] = msg
                ok[:] = False
        return pa.table({
            FILE: pa.array(np.asarray(batch[FILE], dtype=np.int64)),
            ROW: pa.array(np.asarray(batch[ROW], dtype=np.int64)),
            FP: pa.array(np.asarray(batch[FP], dtype=np.int64)),
            VALUE: pa.array(value, mask=~ok, type=pa.float64()),
            LABEL: pa.array(label, type=pa.string()),
            PROBABILITY: pa.array(prob, mask=~ok, type=pa.float64()),
            ERROR_OUT: pa.array(errors, type=pa.string()),
        })


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


def work_items(plans: Sequence[catalog.FilePlan], fs_in) -> List[Dict[str, Any]]:
    """One item per (file, row group): the unit of a read+decode task."""
    items = []
    for index, plan in enumerate(plans):
        meta = catalog.read_metadata(fs_in, catalog.strip(fs_in, plan.input))
        offset = 0
        for group in range(meta.num_row_groups):
            n = meta.row_group(group).num_rows
            if n:
                items.append(dict(file=index, path=plan.input, row_group=group, offset=offset))
            offset += n
    return items


def build_dataset(plans: Sequence[catalog.FilePlan], fs_in, opts: ScoreOptions, config, preprocessor,
                  placeholder_shape):
    """The lazy Ray Dataset of prediction columns (file index, row index, fingerprint, value/label/probability/
    error) for the row groups of ``plans``."""
    import ray
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # not needed for correctness (rows are tagged); bounds buffering
    column = opts.image_column or opts.path_column
    items = work_items(plans, fs_in)
    decoder = Decoder(preprocessor, column, 'bytes' if opts.image_column else 'path', opts.max_image_bytes,
                      placeholder_shape, opts.path_root or os.getcwd())
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(ReadDecode(decoder, opts.batch_size), batch_size=1, batch_format='numpy',
                        num_cpus=opts.cpus_per_decode_task)
    remote = dict(num_cpus=opts.cpus_per_actor)
    if opts.num_gpus_per_actor:
        remote['num_gpus'] = opts.num_gpus_per_actor
    device = 'cuda' if opts.num_gpus_per_actor else 'cpu'
    return ds.map_batches(
        InferenceActor, batch_format='numpy', batch_size=opts.batch_size,
        compute=ray.data.ActorPoolStrategy(size=opts.num_actors),
        fn_constructor_kwargs=dict(config=config, checkpoint=opts.checkpoint, device=device,
                                   torch_threads=opts.torch_threads),
        **remote)


def _empty_preds() -> pa.Table:
    return pa.table({ROW: pa.array([], pa.int64()), FP: pa.array([], pa.int64()),
                     **{k: pa.array([], t) for k, t in OUTPUT_TYPES.items()}})


def _read_batch_rows(meta: pq.FileMetaData, target_bytes: int = 64 << 20, cap: int = 4096) -> int:
    """Rows per driver read/write batch: about ``target_bytes`` of input, at most ``cap`` rows."""
    if meta.num_rows == 0:
        return cap
    total = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return int(max(1, min(cap, target_bytes // max(1, total // meta.num_rows))))


def write_file(plan: catalog.FilePlan, fs_in, fs_out, preds: pa.Table, names: Dict[str, str], column: str) -> int:
    """Stream ``plan.input`` again, attach its prediction rows (``preds``, any order), write atomically.
    Returns the number of rows with an error."""
    preds = preds.sort_by(ROW) if preds.num_rows else preds
    if preds.num_rows != plan.num_rows or not np.array_equal(preds.column(ROW).to_numpy(),
                                                              np.arange(plan.num_rows)):
        raise RuntimeError(f'{plan.input}: the pipeline returned {preds.num_rows} prediction rows for '
                           f'{plan.num_rows} input rows (or duplicates); nothing was written for this file')
    in_path, out_path = catalog.strip(fs_in, plan.input), catalog.strip(fs_out, plan.output)
    tmp = catalog.temporary_name(fs_out, out_path)
    src = catalog.open_parquet(fs_in, in_path)
    schema = src.schema_arrow
    for key, name in names.items():
        schema = schema.append(pa.field(name, OUTPUT_TYPES[key]))
    bad, seen = 0, 0
    sink = tmp if catalog.is_local(fs_out) else fs_out.open(tmp, 'wb')
    try:
        with pq.ParquetWriter(sink, schema) as writer:
            for batch in src.iter_batches(batch_size=_read_batch_rows(src.metadata), use_threads=False):
                part = preds.slice(seen, batch.num_rows)
                expected = fingerprints(pa.chunked_array([batch.column(column)]))
                got = part.column(FP).to_numpy()
                if not np.array_equal(expected, got):
                    row = seen + int(np.flatnonzero(expected != got)[0])
                    raise RuntimeError(f'{plan.input} changed while it was scored (row {row} differs); nothing was '
                                       f'written for this file')
                table = pa.Table.from_batches([batch])
                for key, name in names.items():
                    table = table.append_column(pa.field(name, OUTPUT_TYPES[key]), part.column(key))
                writer.write_table(table.cast(schema))
                bad += batch.num_rows - part.column(ERROR_OUT).null_count
                seen += batch.num_rows
        if not catalog.is_local(fs_out):
            sink.close()
        if seen != plan.num_rows:
            raise RuntimeError(f'{plan.input}: read {seen} rows but its footer says {plan.num_rows}')
        catalog.commit(fs_out, tmp, out_path)
    except BaseException:
        try:
            if not catalog.is_local(fs_out) and not sink.closed:
                sink.close()
            if fs_out.exists(tmp):
                fs_out.rm(tmp)
        except Exception:  # noqa: BLE001
            pass
        raise
    return bad


# ----------------------------------------------------------------------------------------------------------------
# the whole job

@dataclass
class Prepared:
    opts: ScoreOptions
    config: Any
    preprocessor: Any
    placeholder_shape: tuple
    task_name: str
    names: Dict[str, str]
    fs_in: Any
    fs_out: Any
    out_dir: str
    plans: List[catalog.FilePlan]


def prepare(opts: ScoreOptions) -> Prepared:
    """All checks that need no Ray: the model loads from the checkpoint, inputs exist and have the column,
    outputs do not overwrite inputs. Raises FileNotFoundError, CheckpointMismatchError or ScoringSetupError."""
    if opts.batch_size < 1 or opts.num_actors < 1:
        raise catalog.ScoringSetupError('batch size and number of actors must be at least 1')
    if opts.max_image_bytes is not None and opts.max_image_bytes < 1:
        raise catalog.ScoringSetupError('--max-image-bytes must be positive')
    if opts.checkpoint is not None and '://' not in opts.checkpoint and not os.path.isfile(opts.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {opts.checkpoint}')
    config = load_config(opts.config)
    predictor = load_predictor(config, opts.checkpoint, 'cpu')  # the real load: mismatches surface here
    task_name, preprocessor = predictor.task.name, predictor.preprocessor
    placeholder_shape = tuple(preprocessor(np.zeros((224, 224, 3), dtype=np.uint8)).shape)
    del predictor
    gc.collect()
    prefix = f'{task_name}_' if opts.prefix is None else opts.prefix
    names = output_columns(prefix)
    fs_in, fs_out, out_dir, plans = catalog.plan_job(
        opts.input, opts.output, image_column=opts.image_column, path_column=opts.path_column,
        new_columns=list(names.values()), overwrite=opts.overwrite)
    return Prepared(opts, config, preprocessor, placeholder_shape, task_name, names, fs_in, fs_out, out_dir, plans)


def run(prep: Prepared) -> Dict[str, Any]:
    """Score the pending files of ``prep``. Returns a summary with one entry per input file."""
    opts, fs_in, fs_out = prep.opts, prep.fs_in, prep.fs_out
    fs_out.makedirs(prep.out_dir, exist_ok=True)
    for stale in catalog.clean_stale_temporaries(fs_out, prep.out_dir):
        logger.info('removed a partial output of an earlier run: %s', stale)
    pending = [p for p in prep.plans if not p.complete]
    report = dict(task=prep.task_name, columns=prep.names, output=opts.output, files=[])
    for p in prep.plans:
        if p.complete:
            logger.info('skip %s: complete output %s exists (%d rows)', p.input, p.output, p.num_rows)
            report['files'].append(dict(input=p.input, output=p.output, rows=p.num_rows, status='skipped'))
    start = time.perf_counter()
    if pending:
        started = ensure_ray(opts)
        try:
            ds = build_dataset(pending, fs_in, opts, prep.config, prep.preprocessor, prep.placeholder_shape)
            column = opts.image_column or opts.path_column
            buffers: Dict[int, List[pa.Table]] = {i: [] for i in range(len(pending))}
            counts = {i: 0 for i in range(len(pending))}
            done_files, last = 0, start

            def finish(i):
                nonlocal done_files, last
                p = pending[i]
                chunks = buffers.pop(i, [])
                preds = pa.concat_tables(chunks) if chunks else _empty_preds()
                bad = write_file(p, fs_in, fs_out, preds, prep.names, column)
                done_files += 1
                now = time.perf_counter()
                logger.info('[%d/%d] %s -> %s: %d rows (%d with errors) in %.1f s, %.1f rows/s', done_files,
                            len(pending), p.input, p.output, p.num_rows, bad, now - last,
                            p.num_rows / max(now - last, 1e-9))
                report['files'].append(dict(input=p.input, output=p.output, rows=p.num_rows, errors=bad,
                                            status='written', seconds=now - last))
                last = now

            for i, p in enumerate(pending):
                if p.num_rows == 0:
                    finish(i)
            for table in ds.iter_batches(batch_format='pyarrow', batch_size=None, prefetch_batches=2):
                if 'first_output_s' not in report and table.num_rows:
                    report['first_output_s'] = time.perf_counter() - start
                files = table.column(FILE).to_numpy()
                for i in np.unique(files):
                    i = int(i)
                    part = table.filter(pa.array(files == i)) if len(np.unique(files)) > 1 else table
                    if i not in buffers:
                        raise RuntimeError(f'prediction rows for {pending[i].input} arrived after it was written')
                    buffers[i].append(part.combine_chunks())
                    counts[i] += part.num_rows
                    if counts[i] >= pending[i].num_rows:
                        finish(i)
            if buffers:
                missing = [pending[i].input for i in buffers]
                raise RuntimeError(f'the pipeline returned too few rows for {missing}')
        finally:
            if started:
                import ray
                ray.shutdown()
    elapsed = time.perf_counter() - start
    rows = sum(p.num_rows for p in pending)
    report.update(rows_scored=rows, seconds=elapsed, rows_per_s=rows / elapsed if rows else 0.0,
                  files_written=len(pending), files_skipped=len(prep.plans) - len(pending))
    order = {p.input: i for i, p in enumerate(prep.plans)}
    report['files'].sort(key=lambda f: order[f['input']])
    logger.info('done: %d files written, %d skipped, %d rows in %.1f s', report['files_written'],
                report['files_skipped'], rows, elapsed)
    return report


def score_catalog(opts: ScoreOptions = None, **kwargs) -> Dict[str, Any]:
    """Check everything up front, then score. ``score_catalog(config=..., checkpoint=..., input=..., output=...)``."""
    opts = opts or ScoreOptions(**kwargs)
    return run(prepare(opts))
