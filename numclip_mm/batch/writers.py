"""Where output files are written: Ray tasks spread over the cluster, or threads of the driver on a private instance.

Writing an output streams its input file again (every input column is kept), checks each row's cell CRC against the
one the prediction carries and commits the file atomically (:func:`numclip_mm.batch.catalog.write_scored_file`).

- :class:`RayWriters`: one Ray task per file (no CPU reserved, spread over the nodes), so a cluster's outputs are read
  and written by its workers, never funnelled through the driver.
- :class:`ThreadWriters`: when Ray is a private instance this job started on this machine, the driver's threads do
  the same work on the same disk; a task there would first wait seconds for a new worker process (the actors hold
  the prestarted ones) and spend a CPU-second starting it, while the driver is idle.

Both take at most ``max_in_flight`` writes at a time and report through the same three calls, so the driver loop
(:func:`numclip_mm.batch.pipeline.run`) does not know which it has.
"""
import concurrent.futures as cf
import threading
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa

from . import catalog
from .columns import CELL_CRC, cell_crcs


class WriteCancelled(RuntimeError):
    """The job is stopping (a signal or a failure): this write was abandoned and its temporary removed."""


def check_crcs(input_column, predictions: pa.Table, first_row: int, source: str = '') -> None:
    """Raise when an input cell is not the one that was scored (the file changed while the job ran)."""
    expected = cell_crcs(input_column)
    got = predictions.column(CELL_CRC).to_numpy()
    if not np.array_equal(expected, got):
        row = first_row + int(np.flatnonzero(expected != got)[0])
        raise RuntimeError(f'{source} changed while it was scored (row {row} differs); nothing was written for '
                           f'this file: run the job again')


def write_output(plan: catalog.FilePlan, predictions: pa.Table, names: Dict[str, str], column: str,
                 metadata: Dict[str, Any], error_columns: Sequence[str] = (),
                 cancelled: Optional[threading.Event] = None) -> int:
    """The output file of ``plan``; returns the number of rows with an error. ``cancelled``: checked before each
    batch of rows; once set, the write stops (:class:`WriteCancelled`) and leaves no temporary behind."""
    def check(col, part, first_row):
        if cancelled is not None and cancelled.is_set():
            raise WriteCancelled(f'{plan.input}: the job is stopping; its output was not written')
        check_crcs(col, part, first_row, plan.input)
    return catalog.write_scored_file(plan, predictions, names, column, metadata, check, error_columns)


class RayWriters:
    """Each write a Ray task: I/O bound, so no CPU is reserved (never starved by the actors); spread over nodes."""

    where = 'Ray tasks on the workers'

    def __init__(self, max_in_flight: int, max_retries: int):
        import ray
        self._ray = ray
        self.max_in_flight = max_in_flight
        self._task = ray.remote(write_output).options(num_cpus=0, max_retries=max_retries,
                                                      scheduling_strategy='SPREAD')

    def submit(self, *args) -> Any:
        return self._task.remote(*args)

    def done(self, handles: Sequence[Any], block: str = 'none') -> List[Any]:
        """The finished ones among ``handles``: ``block`` 'none' (now), 'any' (wait for one) or 'all'."""
        if not handles:
            return []
        if block == 'none':
            return self._ray.wait(list(handles), num_returns=len(handles), timeout=0)[0]
        return self._ray.wait(list(handles), num_returns=1 if block == 'any' else len(handles))[0]

    def result(self, handle) -> int:
        return self._ray.get(handle)

    def close(self, cancel: bool = False) -> None:
        """Nothing to wait for: tasks still running end with the job (a private instance's shutdown, or Ray stopping
        a finished job's workers); a local temporary they leave is removed by the command or the next run, and an
        object store never shows an unfinished upload as an object."""


class ThreadWriters:
    """Each write on a thread of this process (a private Ray instance: the driver shares the workers' disk)."""

    where = 'the driver (a private instance on this machine)'

    def __init__(self, max_in_flight: int):
        self.max_in_flight = max_in_flight
        self._cancelled = threading.Event()
        self._pool = cf.ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix='numclip-write')

    def submit(self, *args) -> cf.Future:
        return self._pool.submit(write_output, *args, cancelled=self._cancelled)

    def done(self, handles: Sequence[cf.Future], block: str = 'none') -> List[cf.Future]:
        if not handles:
            return []
        return list(cf.wait(handles, timeout=0 if block == 'none' else None,
                            return_when=cf.ALL_COMPLETED if block == 'all' else cf.FIRST_COMPLETED)[0])

    def result(self, handle: cf.Future) -> int:
        return handle.result()

    def close(self, cancel: bool = False) -> None:
        """Wait for the writes in flight (bounded: with ``cancel`` each stops at its next batch of rows and removes
        its temporary); no thread outlives the job."""
        if cancel:
            self._cancelled.set()
        self._pool.shutdown(wait=True, cancel_futures=cancel)
