"""The in-process engine: the job's work items scored by threads of the driver, no Ray.

On a machine with a few CPUs and no cluster, Ray's private instance costs more than it gives: its daemons, one
worker process per actor (each importing torch, ~10 s before the first prediction here) and Ray Data's helper
actors took 82 CPU-seconds for a job the bare loop does in 35 (docs/benchmarks.md). Here the same
:class:`~numclip_mm.batch.actor.InferenceActor` code runs in threads of this process: one model copy shared by every
thread (TorchScript and eager inference are thread-safe), one row-group decoder per thread, one torch thread each,
so while one thread decodes (PIL and NumPy release the GIL) another infers. Predictions go to the driver's
:class:`~numclip_mm.batch.collection.Collection`, the same checks and atomic writes as Ray's path.

:func:`numclip_mm.batch.engine.choose_engine` decides when it is used.
"""
import queue
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

JOIN_S = 10.0  # a stopped job waits this long for its threads (daemons): each stops between two batches


class ItemFailed(RuntimeError):
    """A work item could not be scored at all (its row group unreadable, a decoder bug): its file fails."""

    def __init__(self, file_index: int, error: BaseException):
        super().__init__(f'{type(error).__name__}: {error}')
        self.file_index, self.error = file_index, error


class InProcessScorer:
    """Score ``items`` (work items, :func:`numclip_mm.batch.pipeline.work_items`) in order with ``threads`` threads,
    each scoring with the actor ``make_actor()`` returns (called once per thread, in the thread).

    :meth:`run`, on the caller's thread, hands each prediction table to ``deliver`` as it comes (so signals reach
    the caller, and delivery needs no lock) and each :class:`ItemFailed` to ``failed``; at most ``2 * threads``
    tables wait between the two (the threads pause when the caller is behind). Items of a file that failed are
    skipped."""

    def __init__(self, make_actor: Callable[[], Any], items: Sequence[Dict[str, Any]], threads: int):
        if threads < 1:
            raise ValueError(f'threads must be at least 1, got {threads}')
        self.make_actor, self.items, self.num_threads = make_actor, list(items), int(threads)
        self.scored_items = 0
        self.first_output: Optional[float] = None  # time.perf_counter() of the first predictions
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._out: queue.Queue = queue.Queue(maxsize=2 * self.num_threads)
        self._failed_files: set = set()
        self._threads: List[threading.Thread] = []

    def run(self, deliver: Callable[[Any], None], failed: Callable[[ItemFailed], None]) -> None:
        """Score every item; returns when all are scored. Whatever ends it early (a signal, ``deliver`` raising)
        stops the threads between two batches before it propagates."""
        self._threads = [threading.Thread(target=self._work, name=f'numclip-score-{i}', daemon=True)
                         for i in range(self.num_threads)]
        for thread in self._threads:
            thread.start()
        try:
            running = self.num_threads
            while running:
                try:
                    got = self._out.get(timeout=0.5)  # (a timeout, so a signal's handler runs promptly)
                except queue.Empty:
                    continue
                if got is None:      # a thread finished
                    running -= 1
                elif isinstance(got, ItemFailed):
                    failed(got)
                else:
                    deliver(got)
        finally:
            self.stop()

    def stop(self, timeout: float = JOIN_S) -> None:
        """Stop the threads between two batches and wait for them (bounded)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        while any(t.is_alive() for t in self._threads) and time.monotonic() < deadline:
            try:  # unblock threads waiting to put
                while True:
                    self._out.get_nowait()
            except queue.Empty:
                pass
            for thread in self._threads:
                thread.join(0.05)

    def _take(self) -> Optional[Dict[str, Any]]:
        with self._lock:
            while self._next < len(self.items):
                item = self.items[self._next]
                self._next += 1
                if int(item['file']) not in self._failed_files:
                    return item
            return None

    def _put(self, got) -> bool:
        """Hand ``got`` to :meth:`run`; False when the job is stopping."""
        while not self._stop.is_set():
            try:
                self._out.put(got, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        actor = None
        try:
            actor = self.make_actor()
        except BaseException as err:  # noqa: BLE001  (no model, no scoring: every item fails with this message)
            error = err
        while not self._stop.is_set():
            item = self._take()
            if item is None:
                break
            if actor is None:
                self._fail(item, error)
                continue
            try:
                for table in actor({key: np.array([value]) for key, value in item.items()}):
                    if self.first_output is None:
                        self.first_output = time.perf_counter()
                    if not self._put(table):
                        return
                with self._lock:
                    self.scored_items += 1
            except Exception as err:  # noqa: BLE001  (the item's file fails; the others go on)
                self._fail(item, err)
        self._put(None)

    def _fail(self, item: Dict[str, Any], err: BaseException) -> None:
        with self._lock:
            self._failed_files.add(int(item['file']))
        self._put(ItemFailed(int(item['file']), err))


__all__ = ['InProcessScorer', 'ItemFailed']
