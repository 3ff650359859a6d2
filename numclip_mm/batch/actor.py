"""The inference actor: one Predictor per model, made once per actor; batches in, small prediction columns out.

A CPU actor makes its Predictor of the driver's traced graph of the model (torch alone: no mmpretrain, open_clip or
model build); a GPU actor, or any actor when the job has no graph of a model, builds it from config and checkpoint.

It runs in one of two modes (see :mod:`numclip_mm.batch.pipeline`):

- ``decode_in_actor`` (the CPU default): the actor takes (file, row group) work items, reads and decodes them
  itself and runs the model, so decoded pixels never cross a process boundary (no serialisation, no copies).
- decoded batches (the GPU default): CPU tasks decode, the actor only infers, so the GPU is never waiting on decode.

With several models, each decoded image goes through every model (one decode per distinct model input); each
model adds its own columns. A batch whose inference fails is retried row by row, so only the guilty rows of that
model get an error.
"""
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa

from .claims import POOL, WorkClaims, item_key
from .columns import CELL_CRC, FILE_INDEX, IMAGE_TENSOR, ROW_ERROR, ROW_INDEX, interval_types, prediction_schema

GRAPH_FETCH_TIMEOUT_S = 600.0  # a model's graph from Ray's object store (hundreds of MB across a cluster)


def load_predictor(config, checkpoint: Optional[str], device: str = 'cpu', precision: Optional[str] = None,
                   checkpoint_sha256: Optional[str] = None, calibration=None, graph=None):
    """A Predictor of exactly the checkpoint the job planned with, with the calibration the driver already checked
    (or none: the sidecar is not read): ``graph``, the driver's trace of it (archive bytes or a Ray object reference
    to them), loaded with torch alone; else built from ``config`` and ``checkpoint`` (a local path or URI whose
    bytes are read once and must have ``checkpoint_sha256``, else
    :class:`numclip_mm.inference.CheckpointChangedError`)."""
    from numclip_mm.inference import Predictor
    if graph is not None:
        import ray
        if isinstance(graph, ray.ObjectRef):
            try:
                graph = ray.get(graph, timeout=GRAPH_FETCH_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                raise TimeoutError(f'the model\'s graph did not arrive from the object store within '
                                   f'{GRAPH_FETCH_TIMEOUT_S:.0f} s') from None
        return Predictor.from_graph(graph, device=device, precision=precision, calibration=calibration)
    return Predictor(config, checkpoint, device=device, precision=precision,  # (no calibration: no sidecar look-up)
                     calibration=False if calibration is None else calibration, checkpoint_sha256=checkpoint_sha256)


class InferenceActor:
    """``map_batches`` callable class (``ActorPoolStrategy``): one or several models over one decode.

    Args:
        models: one ``dict(config=..., checkpoint=..., prefix=..., checkpoint_sha256=..., calibration=...,
            graph=...)`` per model: ``graph`` the driver's trace of the model (:meth:`Predictor.trace`; its archive
            or a Ray object reference), else config and checkpoint as for :class:`numclip_mm.inference.Predictor`
            with ``checkpoint_sha256`` the digest the job's outputs record (the actor loads exactly the bytes that
            have it); ``calibration`` the conformal calibration the driver checked (a
            :class:`numclip_mm.conformal.Calibration`); each model's columns are named ``f'{prefix}{suffix}'``.
        device, precision: 'cpu'/'cuda'; 'fp32'/'fp16'/'bf16' (None: the device's default).
        torch_threads: ``torch.set_num_threads`` in the actor (None: Ray's OMP setting).
        row_decoder: a :class:`numclip_mm.batch.decode.RowGroupDecoder` whose preprocessors this actor replaces by
            its own models' (one per distinct input): set in ``decode_in_actor`` mode.
        intervals: conformal coverage levels whose interval bounds are added (``low_<level>``/``high_<level>``).
        embedding: also return each model's L2-normalised image embedding (fp16 list column ``{prefix}embedding``).
        claims, claim_as: the folder of the job's :class:`~numclip_mm.batch.claims.WorkClaims` (the driver scores
            items too: see :mod:`numclip_mm.batch.head_start`) and this actor's side ('pool' or 'driver'); a work
            item the other side claimed is skipped (``decode_in_actor`` mode).
    """

    def __init__(self, models, device='cpu', precision=None, torch_threads=None, row_decoder=None, intervals=(),
                 embedding=False, claims=None, claim_as=POOL):
        import torch
        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        predictors = [load_predictor(m.get('config'), m.get('checkpoint'), device, precision,
                                     m.get('checkpoint_sha256'), m.get('calibration'), m.get('graph'))
                      for m in models]
        self.attach(predictors, [m['prefix'] for m in models], row_decoder, intervals, embedding, claims, claim_as)

    @classmethod
    def sharing(cls, predictors, prefixes=('',), **kwargs) -> 'InferenceActor':
        """An actor over predictors already loaded: the in-process engine's threads share one copy of each model
        (``kwargs``: as :meth:`attach`)."""
        actor = cls.__new__(cls)
        actor.attach(predictors, prefixes, **kwargs)
        return actor

    def attach(self, predictors, prefixes=('',), row_decoder=None, intervals=(), embedding=False, claims=None,
               claim_as=POOL) -> None:
        """Everything the constructor does besides loading the models (tests attach stand-in predictors)."""
        from .decode import group_preprocessors
        self.claims, self.claim_as = (WorkClaims(claims) if claims is not None else None), claim_as
        self.predictors, self.prefixes = list(predictors), list(prefixes)
        if len(self.predictors) != len(self.prefixes):
            raise ValueError(f'{len(self.predictors)} models but {len(self.prefixes)} prefixes')
        self.intervals = tuple(intervals)
        self.embedding = bool(embedding)
        self.interval_columns = tuple(interval_types(self.intervals))
        self.schema = prediction_schema(self.intervals, self.prefixes, self.embedding)
        for predictor in self.predictors:
            predictor.check_intervals(self.intervals)
        preprocessors, self.groups = group_preprocessors([getattr(p, 'preprocessor', None) for p in self.predictors])
        self.row_decoder = row_decoder
        if row_decoder is not None:
            row_decoder.decoder.preprocessors = preprocessors

    # -- inference -----------------------------------------------------------------------------------------------
    def _predict(self, predictor, tensors: np.ndarray):
        import torch
        if tensors.dtype == object:
            inputs = [torch.from_numpy(np.ascontiguousarray(t)) for t in tensors]
        else:
            inputs = torch.from_numpy(np.ascontiguousarray(tensors))
        if self.embedding:
            return predictor.predict_tensors(inputs, self.intervals, embeddings=True)
        return predictor.predict_tensors(inputs, self.intervals)

    def _model_columns(self, predictor, errors: List[Optional[str]], tensors: np.ndarray) -> List[pa.Array]:
        """One model's prediction columns (prediction_types order) for a batch; rows with a decode error get nulls
        and keep their error; a batch whose inference fails is retried row by row."""
        errors = list(errors)
        n = len(errors)
        ok = np.array([e is None for e in errors], dtype=bool)
        value, raw, prob, top_prob = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
        bounds = {key: np.zeros(n) for key in self.interval_columns}
        label, top = np.full(n, None, dtype=object), np.full(n, None, dtype=object)
        embedding = None
        index = np.flatnonzero(ok)
        if len(index):
            try:
                outs = [(index, self._predict(predictor, tensors[index]))]
            except Exception:  # noqa: BLE001  (retry alone: only the guilty rows get the error)
                outs = []
                for i in index:
                    try:
                        outs.append((np.array([i]), self._predict(predictor, tensors[i:i + 1])))
                    except Exception as err:  # noqa: BLE001
                        errors[i] = f'inference failed: {type(err).__name__}: {err}'
                        ok[i] = False
            for where, out in outs:
                value[where], raw[where] = out['value'], out['value_raw']
                prob[where], label[where] = out['probability'], out['label']
                top_prob[where], top[where] = out['bin_argmax_probability'], out['bin_argmax']
                for key, column in bounds.items():
                    column[where] = out[key]
                if self.embedding:
                    if embedding is None:
                        embedding = np.zeros((n, out['embedding'].shape[1]), dtype=np.float16)
                    embedding[where] = out['embedding']
        columns = [pa.array(value, mask=~ok), pa.array(raw, mask=~ok), pa.array(label, type=pa.string()),
                   pa.array(prob, mask=~ok), pa.array(top, type=pa.string()), pa.array(top_prob, mask=~ok),
                   pa.array(errors, type=pa.string()),
                   *(pa.array(column, mask=~ok) for column in bounds.values())]
        if self.embedding:
            columns.append(_fp16_lists(embedding if embedding is not None else np.zeros((n, 0), np.float16), ok))
        return columns

    def predict_rows(self, rows, crcs, errors: List[Optional[str]], tensors, file_index) -> pa.Table:
        """Every model's prediction columns for one decoded batch. ``tensors``: one stacked array per distinct
        model input (see :func:`numclip_mm.batch.decode.group_preprocessors`), or one array for all."""
        if not isinstance(tensors, (list, tuple)):
            tensors = [tensors]
        n = len(errors)
        columns = [pa.array(np.broadcast_to(np.asarray(file_index, dtype=np.int64), (n,))),
                   pa.array(np.asarray(rows, dtype=np.int64)), pa.array(np.asarray(crcs, dtype=np.int64))]
        for predictor, group in zip(self.predictors, self.groups):
            columns += self._model_columns(predictor, errors, tensors[group])
        return pa.Table.from_arrays(columns, schema=self.schema)

    # -- Ray Data ------------------------------------------------------------------------------------------------
    def __call__(self, batch: Dict[str, np.ndarray]):
        if self.row_decoder is None:  # decoded batch from the decode tasks
            tensors = [batch[f'{IMAGE_TENSOR}{g}'] for g in range(max(self.groups) + 1)]
            yield self.predict_rows(batch[ROW_INDEX], batch[CELL_CRC], batch[ROW_ERROR], tensors, batch[FILE_INDEX])
            return
        for file_index, uri, group, offset, start, stop in zip(batch['file'], batch['path'], batch['row_group'],
                                                                batch['offset'], batch['start'], batch['stop']):
            if self.claims is not None and not self.claims.claim(item_key(file_index, group, start), self.claim_as):
                continue  # the other side scores this item
            for rows, crcs, errors, tensors in self.row_decoder.slices(int(file_index), str(uri), int(group),
                                                                         int(offset), int(start), int(stop)):
                yield self.predict_rows(rows, crcs, errors, tensors, int(file_index))


def _fp16_lists(matrix: np.ndarray, valid: np.ndarray) -> pa.Array:
    """(N, D) -> a list<halffloat> column of N rows of D values; null where not ``valid``."""
    n, d = matrix.shape
    values = pa.array(np.ascontiguousarray(matrix, dtype=np.float16).reshape(-1), type=pa.float16())
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, values, mask=pa.array(~valid))
