"""The driver scores while the actors start.

Between the moment the driver has traced the model and the moment the first actor returns predictions lie several
seconds (Ray's start, Ray Data's actor pool, each actor's imports); on a small machine that is most of a short job.
The driver already holds the traced model, so it scores work items itself in that time: one more
:class:`~numclip_mm.batch.actor.InferenceActor`, in a thread of the driver, taking items from the back of the list
while the actors go front to back. :class:`~numclip_mm.batch.claims.WorkClaims` makes sure every item is scored
exactly once. The driver stops taking items when the actors' first predictions arrive (the actors then use every
CPU) and finishes the item in hand; its predictions go through the same collection, checks and writes as the
actors' (the output is the same file either way).
"""
import threading
import time
from collections import deque
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .claims import DRIVER, WorkClaims, item_key


class HeadStart:
    """Score ``items`` (work items, :func:`numclip_mm.batch.pipeline.work_items`) from the back in a thread, with
    the actor ``make_actor()`` returns, until :meth:`stop`. Predictions wait in a queue until :meth:`attach` gives
    the pipeline's ``deliver`` (which must be thread-safe), then go to it as they come."""

    def __init__(self, make_actor: Callable[[], Any], items: Sequence[Dict[str, Any]], claims: WorkClaims):
        self.make_actor, self.items, self.claims = make_actor, list(items), claims
        self.scored_items = self.rows = 0
        self.first_output: Optional[float] = None   # time.perf_counter() of its first predictions
        self.error: Optional[BaseException] = None
        self.failed_file: Optional[int] = None      # the file of the item it was scoring when it failed
        self._stop, self._abort = threading.Event(), threading.Event()
        self._lock = threading.Lock()
        self._queue: deque = deque()
        self._deliver: Optional[Callable] = None
        self._thread = threading.Thread(target=self._run, name='numclip-head-start', daemon=True)

    def start(self) -> 'HeadStart':
        self._thread.start()
        return self

    def attach(self, deliver: Callable) -> None:
        """From now on predictions go to ``deliver``; those that waited go first."""
        with self._lock:
            while self._queue:
                deliver(self._queue.popleft())
            self._deliver = deliver

    def stop(self) -> None:
        """Take no more items (the one in hand is finished: it is claimed, nobody else will score it)."""
        self._stop.set()

    def abort(self) -> None:
        """Stop between two batches (the job is ending anyway)."""
        self._stop.set()
        self._abort.set()

    def join(self, timeout: Optional[float] = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _emit(self, table) -> None:
        with self._lock:
            if self._deliver is None:
                self._queue.append(table)
            else:
                self._deliver(table)

    def _run(self) -> None:
        import torch
        threads = torch.get_num_threads()  # the actor sets its own: the caller's process gets its setting back
        item = None
        try:
            _lowest_priority()
            actor = self.make_actor()
            for item in reversed(self.items):
                if self._stop.is_set():
                    break
                if not self.claims.claim(item_key(item['file'], item['row_group'], item['start']), DRIVER):
                    item = None  # the actors have it
                    continue
                batch = {key: np.array([value]) for key, value in item.items()}
                for table in actor(batch):
                    if self._abort.is_set():  # the job is ending: nothing more is delivered
                        return
                    if self.first_output is None:
                        self.first_output = time.perf_counter()
                    self.rows += table.num_rows
                    self._emit(table)
                self.scored_items += 1
                item = None
        except BaseException as err:  # noqa: BLE001  (the pipeline reports it: the file of the item fails)
            self.error = err
            self.failed_file = None if item is None else int(item['file'])
        finally:
            torch.set_num_threads(threads)


def _lowest_priority() -> None:
    """This thread only (Linux: a thread's nice value is its own) yields to every other process: Ray's daemons
    and the actors' start-up keep their CPU, the driver scores with what is left."""
    import os
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux: the thread runs at the process's priority
        pass


__all__: List[str] = ['HeadStart']
