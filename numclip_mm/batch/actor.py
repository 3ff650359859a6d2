"""The inference actor: one Predictor per actor, built once; batches in, small prediction columns out.

It runs in one of two modes (see :mod:`numclip_mm.batch.pipeline`):

- ``decode_in_actor`` (the CPU default): the actor takes (file, row group) work items, reads and decodes them
  itself and runs the model, so decoded pixels never cross a process boundary (no serialisation, no copies).
- decoded batches (the GPU default): CPU tasks decode, the actor only infers, so the GPU is never waiting on decode.

A batch whose inference fails is retried row by row, so only the guilty rows get an error.
"""
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa

from .columns import CELL_CRC, FILE_INDEX, IMAGE_TENSOR, ROW_ERROR, ROW_INDEX, interval_types, prediction_schema


def load_predictor(config, checkpoint: Optional[str], device: str = 'cpu', precision: Optional[str] = None,
                   checkpoint_sha256: Optional[str] = None, calibration=None):
    """A Predictor of exactly the checkpoint the job planned with: a local path or URI whose bytes are read once and
    must have ``checkpoint_sha256`` (else :class:`numclip_mm.inference.CheckpointChangedError`), with the
    calibration the driver already checked (the sidecar is not read again)."""
    from numclip_mm.inference import Predictor
    return Predictor(config, checkpoint, device=device, precision=precision, calibration=calibration,
                     checkpoint_sha256=checkpoint_sha256)


class InferenceActor:
    """``map_batches`` callable class (``ActorPoolStrategy``).

    Args:
        config, checkpoint: as for :class:`numclip_mm.inference.Predictor`.
        checkpoint_sha256: the digest the job's outputs record: the actor loads exactly the bytes that have it.
        calibration: the conformal calibration the driver checked (a :class:`numclip_mm.conformal.Calibration`).
        device, precision: 'cpu'/'cuda'; 'fp32'/'fp16'/'bf16' (None: the device's default).
        torch_threads: ``torch.set_num_threads`` in the actor (None: Ray's OMP setting).
        row_decoder: a :class:`numclip_mm.batch.decode.RowGroupDecoder` whose preprocessor this actor replaces by its
            own
            model's (input size included): set in ``decode_in_actor`` mode.
        intervals: conformal coverage levels whose interval bounds are added (``low_<level>``/``high_<level>``).
    """

    def __init__(self, config, checkpoint, checkpoint_sha256=None, calibration=None, device='cpu', precision=None,
                 torch_threads=None, row_decoder=None, intervals=()):
        import torch
        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        self.attach(load_predictor(config, checkpoint, device, precision, checkpoint_sha256, calibration),
                    row_decoder, intervals)

    def attach(self, predictor, row_decoder=None, intervals=()) -> None:
        """Everything the constructor does besides loading the model (tests attach a stand-in predictor)."""
        self.predictor = predictor
        self.intervals = tuple(intervals)
        self.interval_columns = tuple(interval_types(self.intervals))
        self.schema = prediction_schema(self.intervals)
        self.predictor.check_intervals(self.intervals)
        self.row_decoder = row_decoder
        if row_decoder is not None:
            row_decoder.decoder.preprocessor = self.predictor.preprocessor

    # -- inference -----------------------------------------------------------------------------------------------
    def _predict(self, tensors: np.ndarray):
        import torch
        if tensors.dtype == object:
            inputs = [torch.from_numpy(np.ascontiguousarray(t)) for t in tensors]
        else:
            inputs = torch.from_numpy(np.ascontiguousarray(tensors))
        return self.predictor.predict_tensors(inputs, self.intervals)

    def predict_rows(self, rows, crcs, errors: List[Optional[str]], tensors: np.ndarray, file_index) -> pa.Table:
        """Prediction columns for one decoded batch; rows with a decode error get nulls and keep their error."""
        errors = list(errors)
        n = len(errors)
        ok = np.array([e is None for e in errors], dtype=bool)
        value, raw, prob, top_prob = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
        bounds = {key: np.zeros(n) for key in self.interval_columns}
        label, top = np.full(n, None, dtype=object), np.full(n, None, dtype=object)
        index = np.flatnonzero(ok)
        if len(index):
            try:
                outs = [(index, self._predict(tensors[index]))]
            except Exception:  # noqa: BLE001  (retry alone: only the guilty rows get the error)
                outs = []
                for i in index:
                    try:
                        outs.append((np.array([i]), self._predict(tensors[i:i + 1])))
                    except Exception as err:  # noqa: BLE001
                        errors[i] = f'inference failed: {type(err).__name__}: {err}'
                        ok[i] = False
            for where, out in outs:
                value[where], raw[where] = out['value'], out['value_raw']
                prob[where], label[where] = out['probability'], out['label']
                top_prob[where], top[where] = out['bin_argmax_probability'], out['bin_argmax']
                for key, column in bounds.items():
                    column[where] = out[key]
        return pa.Table.from_arrays([
            pa.array(np.broadcast_to(np.asarray(file_index, dtype=np.int64), (n,))),
            pa.array(np.asarray(rows, dtype=np.int64)), pa.array(np.asarray(crcs, dtype=np.int64)),
            pa.array(value, mask=~ok), pa.array(raw, mask=~ok), pa.array(label, type=pa.string()),
            pa.array(prob, mask=~ok), pa.array(top, type=pa.string()), pa.array(top_prob, mask=~ok),
            pa.array(errors, type=pa.string()),
            *(pa.array(column, mask=~ok) for column in bounds.values())], schema=self.schema)

    # -- Ray Data ------------------------------------------------------------------------------------------------
    def __call__(self, batch: Dict[str, np.ndarray]):
        if self.row_decoder is None:  # decoded batch from the decode tasks
            yield self.predict_rows(batch[ROW_INDEX], batch[CELL_CRC], batch[ROW_ERROR], batch[IMAGE_TENSOR],
                                    batch[FILE_INDEX])
            return
        for file_index, uri, group, offset in zip(batch['file'], batch['path'], batch['row_group'],
                                                  batch['offset']):
            for rows, crcs, errors, tensors in self.row_decoder.slices(int(file_index), str(uri), int(group),
                                                                         int(offset)):
                yield self.predict_rows(rows, crcs, errors, tensors, int(file_index))
