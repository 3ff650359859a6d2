"""Small builders shared by several test modules."""
import contextlib
import io
import os
import runpy
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / 'tests' / 'configs' / 'numclip_tiny.py'


def write_tiny_config(path, task='count', model_name='numclip-tiny') -> str:
    """tests/configs/numclip_tiny.py with another task or CLIP model, written to ``path``."""
    path = Path(path)
    path.write_text(f"_base_ = [{str(TINY_CONFIG)!r}]\n"
                    f"model = dict(clip=dict(model_name={model_name!r}), head=dict(task={task!r}))\n")
    return str(path)


class Payload:
    """Unpickling this object creates ``marker``: proof that pickled code ran (the refusal tests check it never
    does under weights-only loading)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def dying_actor(exit_at_batch: int, marker=None, load_models: bool = True):
    """A scorer actor class (:class:`numclip_mm.batch.actor.InferenceActor` subclass) whose process exits, as a crash
    would, when it reaches its ``exit_at_batch``-th batch: with a ``marker`` path only while that file does not exist
    yet (it is created first: one death), without one at that batch of every incarnation. ``load_models=False``
    (only with ``exit_at_batch=1`` and no marker) skips the models' load, seconds per incarnation, and exits as soon
    as its first batch arrives. Defined in a function so that Ray pickles it by value (the workers need not import
    this test module)."""
    import os

    from numclip_mm.batch.actor import InferenceActor
    if not load_models and (exit_at_batch != 1 or marker is not None):
        raise ValueError('an actor without models must die at its first batch, every time')

    class DyingActor(InferenceActor):
        batches = 0

        def __init__(self, *args, **kwargs):
            if load_models:
                super().__init__(*args, **kwargs)

        def __call__(self, batch):
            if not load_models:
                os._exit(1)  # at its first batch, before decoding (it has no model to decode for)
            yield from super().__call__(batch)

        def predict_rows(self, *args, **kwargs):
            self.batches += 1
            if self.batches == exit_at_batch and (marker is None or not os.path.exists(marker)):
                if marker is not None:
                    open(marker, 'w').close()
                os._exit(1)
            return super().predict_rows(*args, **kwargs)
    return DyingActor


def raising_actor(message: str):
    """A scorer actor class that loads nothing and raises ``RuntimeError(message)`` at every batch: a task error,
    not a death (Ray keeps the actor). Defined in a function for the same reason as :func:`dying_actor`."""
    from numclip_mm.batch.actor import InferenceActor

    class RaisingActor(InferenceActor):
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, batch):
            raise RuntimeError(message)
            yield  # a generator, as InferenceActor.__call__
    return RaisingActor


_last_tool_end = [0.0]


def run_tool_in_process(script, *args, env=None) -> subprocess.CompletedProcess:
    """``python <script> <args>`` from the repository root, run inside this process (``runpy`` as ``__main__``, as
    tools/benchmark/report.py runs the tools): the same argv, exit status, stdout and stderr (an uncaught exception:
    its traceback and status 1) without a new interpreter's ~5 s of imports; the environment, working directory,
    ``sys.argv`` and ``sys.path`` are restored afterwards (``env``: variables set for the run only). For tests of
    what a tool does; tests of a fresh interpreter (registration from a config alone, environment variables read at
    start, torchrun) start a subprocess.

    MMEngine names a run's logger and visualizer after the config and the start time in whole seconds and reuses
    an existing instance of that name, so a run here starts in a later second than the previous one ended.
    """
    now = time.time()
    if int(now) == int(_last_tool_end[0]):
        time.sleep(int(now) + 1 - now)
    argv = [str(script), *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv, os.getcwd(), list(sys.path), dict(os.environ)
    status = 0
    try:
        os.chdir(ROOT)
        os.environ.update(env or {})
        sys.argv = argv
        sys.path.insert(0, str((ROOT / script).parent))  # what `python tools/x.py` puts first: `import common`
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            # what print_log(logger='current') reaches before the run builds its own logger: in a new interpreter
            # print(), here the last logger an earlier run made (its handler writing to that run's streams)
            from mmengine.logging import MMLogger
            MMLogger.get_instance(f'run_tool_in_process-{time.time_ns()}', logger_name='mmengine')
            try:
                runpy.run_path(str(ROOT / script), run_name='__main__')
            except SystemExit as exit_:
                if isinstance(exit_.code, str):
                    print(exit_.code, file=sys.stderr)
                status = 1 if isinstance(exit_.code, str) else (exit_.code or 0)
            except Exception:  # noqa: BLE001  (reported as the interpreter would)
                traceback.print_exc()
                status = 1
    finally:
        sys.argv, cwd, sys.path[:] = saved[0], saved[1], saved[2]
        os.chdir(cwd)
        os.environ.clear()  # what the run set (MMEngine: LOCAL_RANK, ...) must not reach later subprocesses
        os.environ.update(saved[3])
        _last_tool_end[0] = time.time()
    return subprocess.CompletedProcess(argv, status, out.getvalue(), err.getvalue())


RUN_MARK = 'NUMCLIP_TEST_RUN'


def processes_marked(mark: str) -> list:
    """PIDs of the processes whose environment has ``NUMCLIP_TEST_RUN=mark``: a command started with that variable and
    everything it started, Ray's daemons and workers included (they inherit the driver's environment)."""
    import psutil
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(RUN_MARK) == mark:
                found.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def wait_until_gone(mark: str, timeout: float = 60.0) -> None:
    """Wait until no process of a killed command is left (see :func:`processes_marked`): Ray workers run in their own
    process groups and exit once they notice their raylet is gone; until then one may still commit an output."""
    deadline = time.monotonic() + timeout
    while processes_marked(mark):
        assert time.monotonic() < deadline, f'processes of the killed run still alive after {timeout:.0f} s'
        time.sleep(0.2)


# ---------------------------------------------------------------- commands with their own Ray
def free_port() -> int:
    """A free TCP port on the loopback address."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def scorer_env(**extra) -> dict:
    """The environment of a scorer command or `ray` CLI call under test: this one without any ``RAY_*`` variable (an
    address or setting of the caller's must not leak in), Ray kept on loopback, no usage stats, the checkout on
    ``PYTHONPATH``; ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('RAY_')}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER='0', RAY_USAGE_STATS_ENABLED='0', PYTHONPATH=str(ROOT), **extra)
    return env


def kill_group(proc) -> None:
    """SIGTERM, then SIGKILL, the process group of a command started with ``start_new_session=True``: that command
    and everything it started in its group (a `ray start` head's daemons, a private Ray instance), nothing else."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        time.sleep(1)


@contextlib.contextmanager
def collector_states(scoring: str):
    """While inside, numclip-score's planning (``score.prepare``) and its scoring step (``pipeline.<scoring>``:
    ``_score`` on Ray, ``_score_in_process``) record the garbage collector's state when they are called. Yields the
    record: ``planning`` (enabled), ``scoring`` (enabled, freeze count)."""
    import gc

    from numclip_mm.batch import pipeline
    from numclip_mm.batch import score as score_module
    states = {}
    prepare_job, score_job = score_module.prepare, getattr(pipeline, scoring)

    def preparing(*args, **kwargs):
        states['planning'] = gc.isenabled()
        return prepare_job(*args, **kwargs)

    def scoring_step(*args, **kwargs):
        states['scoring'] = gc.isenabled(), gc.get_freeze_count()
        return score_job(*args, **kwargs)
    score_module.prepare = preparing
    setattr(pipeline, scoring, scoring_step)
    try:
        yield states
    finally:
        score_module.prepare = prepare_job
        setattr(pipeline, scoring, score_job)

