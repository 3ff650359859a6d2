"""The driver's bookkeeping: prediction rows in, one checked, atomic write per complete input file out.

Whoever scores (Ray's actors, the driver's head start, the in-process engine's threads) hands prediction tables to
:meth:`Collection.deliver`. Each table's rows carry their (file, row) index, so rows may arrive in any order and
in any split; a file is written once all its rows are in, sorted back into the input's order, with exactly one
prediction per input row (else nothing is written for it). Writes run on a
:mod:`~numclip_mm.batch.writers` backend, at most ``max_in_flight`` at a time; their results (rows with errors, or
the failure) go to the job's report.
"""
import logging
import re
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa

from . import catalog
from .columns import CELL_CRC, FILE_INDEX, ROW_INDEX, prediction_schema
from .errortext import error_text, redact

logger = logging.getLogger('numclip_mm.batch')


class ScoringFailed(RuntimeError):
    """The job stopped while scoring (after Ray's bounded retries, because an input changed, or because the scorers
    returned rows that do not add up to the input); ``report``: the run summary so far."""

    def __init__(self, message: str, report: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.report = report


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
                    self.total_files, redact(plan.input), redact(plan.output), plan.num_rows, bad, self.rows,
                    self.total_rows, elapsed, self.rows / max(elapsed, 1e-9))


def last_error_line(text: str) -> str:
    """The innermost ``SomeError: message`` line of a (remote) traceback text, else its last line."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    named = [line for line in lines if re.match(r'^[\w.]*(Error|Exception|Exit|Interrupt)\b:?', line)]
    return (named or lines or [''])[-1]


class Collection:
    """Prediction rows of the ``pending`` files (:class:`numclip_mm.batch.catalog.FilePlan`) of ``job`` (a
    :class:`numclip_mm.batch.pipeline.ScoringJob`) in, outputs written through ``writers``; ``report['files']`` and
    ``report['failed']`` get one entry per file. :meth:`deliver` is thread-safe (the head start delivers from
    its own thread)."""

    def __init__(self, job, pending: Sequence[catalog.FilePlan], report: Dict[str, Any], writers, origin: float):
        self.job, self.pending, self.report, self.writers, self.origin = job, list(pending), report, writers, origin
        self.buffers: Dict[int, List[pa.Table]] = {i: [] for i in range(len(self.pending))}
        self.counts = {i: 0 for i in range(len(self.pending))}
        self.failed_files: set = set()
        self.in_flight: Dict[Any, int] = {}
        self.columns = job.prediction_columns
        self.progress = Progress(sum(p.num_rows for p in self.pending), len(self.pending),
                                 job.opts.progress_interval_s)
        self.lock = threading.Lock()
        for i, p in enumerate(self.pending):
            if p.num_rows == 0:
                self._finish(i)

    def deliver(self, table: pa.Table, at: float, source: str) -> None:
        """Take one prediction table (``at``: its ``time.perf_counter()``; ``source``: who scored it, for the
        first-predictions log line); write every file it completes."""
        with self.lock:
            if 'first_output_s' not in self.report:
                self.report['first_output_s'] = at - self.origin
                ray_ready = self.report.get('ray_ready_s')
                logger.info('first predictions back %.1f s after the start (%s%s)', self.report['first_output_s'],
                            source, f'; Ray ready after {ray_ready:.1f} s' if ray_ready is not None else '')
            files = table.column(FILE_INDEX).to_numpy()
            for i in np.unique(files).tolist():
                if i in self.failed_files:  # other items of a file that failed: dropped with it
                    continue
                part = table if files[0] == files[-1] == i else table.filter(pa.array(files == i))
                if i not in self.buffers:
                    raise ScoringFailed(f'prediction rows for {self.pending[i].input} arrived after it was '
                                        f'written')
                self.buffers[i].append(part.select([ROW_INDEX, CELL_CRC, *self.columns]).combine_chunks())
                self.counts[i] += part.num_rows
                self.progress.add_rows(part.num_rows)
                if self.counts[i] >= self.pending[i].num_rows:
                    self._finish(i)
            self._collect(self.writers.done(list(self.in_flight)))

    def fail_file(self, i: int, message: str, where: str = '') -> None:
        """File ``i`` could not be scored: nothing is written for it, the others go on (the next run scores it)."""
        with self.lock:
            if i in self.failed_files or i not in self.buffers:
                return
            self.failed_files.add(i)
            self.buffers.pop(i)
            self._record_failure(self.pending[i], message, where)

    def drain(self) -> None:
        """Wait for every write in flight and record its result."""
        self._collect(self.writers.done(list(self.in_flight), block='all'))

    def check_complete(self) -> None:
        """Raise when a file never received all its rows (nothing was written for it)."""
        if self.buffers:
            missing = [self.pending[i].input for i in self.buffers]
            raise ScoringFailed(f'the pipeline returned too few rows for {missing}')

    # -- internals (called under the lock) ----------------------------------------------------------------------
    def _record_failure(self, p: catalog.FilePlan, message: str, where: str = '') -> None:
        logger.error('%s: %s%s', redact(p.input), message, f' ({where})' if where else '')
        self.report['failed'].append(dict(input=p.input, error=f'{redact(p.input)}: {message}'))
        self.report['files'].append(dict(input=p.input, output=p.output, rows=p.num_rows, status='failed'))

    def _collect(self, handles) -> None:
        for handle in handles:
            i = self.in_flight.pop(handle)
            p = self.pending[i]
            try:
                bad = self.writers.result(handle)
            except Exception as err:  # noqa: BLE001  (one file failing does not stop the others)
                self._record_failure(p, error_text(last_error_line(str(getattr(err, 'cause', None) or err))))
                continue
            self.progress.file_done(p, bad)
            self.report['files'].append(dict(input=p.input, output=p.output, rows=p.num_rows, errors=bad,
                                             status='written'))

    def _finish(self, i: int) -> None:
        job, opts = self.job, self.job.opts
        chunks = self.buffers.pop(i)
        preds = pa.concat_tables(chunks) if chunks else prediction_schema(
            opts.intervals, [m.prefix for m in job.models], opts.embedding).empty_table().select(
            [ROW_INDEX, CELL_CRC, *self.columns])
        preds = preds.sort_by(ROW_INDEX)
        p = self.pending[i]
        if preds.num_rows != p.num_rows or not np.array_equal(preds.column(ROW_INDEX).to_numpy(),
                                                               np.arange(p.num_rows)):
            raise ScoringFailed(f'{p.input}: the pipeline returned {preds.num_rows} prediction rows for '
                                f'{p.num_rows} input rows (or duplicates); nothing was written for this file')
        while len(self.in_flight) >= self.writers.max_in_flight:
            self._collect(self.writers.done(list(self.in_flight), block='any'))
        for name in job.error_columns:
            errors = preds.column(name)
            if errors.null_count < len(errors):  # the log names a cause, not only a count (redacted, short texts)
                first = int(np.flatnonzero(errors.is_valid().to_numpy(zero_copy_only=False))[0])
                logger.info('%s: %d rows with an error; the first, row %d (%s): %s', redact(p.input),
                            len(errors) - errors.null_count, first, name, errors[first].as_py())
        metadata = catalog.expected_metadata(p, job.model_identity, job.names)
        self.in_flight[self.writers.submit(p, preds, job.names, job.column, metadata, job.error_columns)] = i


__all__ = ['Collection', 'Progress', 'ScoringFailed', 'last_error_line']
