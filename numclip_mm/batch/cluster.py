"""Connecting to Ray and sizing the scoring graph to what the cluster offers.

- :func:`resolve_address` finds the cluster as ``ray.init`` does (``--address``, then ``RAY_ADDRESS``, then the
  cluster a ``ray start`` on this machine recorded, else a new private instance), and :func:`probe` refuses, within
  seconds and with a message naming it, an address where nothing answers (``ray.init`` itself retries for minutes).
- :class:`RayStarter` starts or connects in a background thread while the driver checks its inputs, so the seconds
  Ray takes to start overlap the driver's own start-up. The thread lives until :meth:`RayStarter.close`: Ray's
  daemons are bound to the thread that started them (``PR_SET_PDEATHSIG``) and die with it.
- :func:`size_pipeline` turns the cluster's resources into actors x torch threads (and decode tasks), such that
  every CPU (and GPU) is used and no stage can wait for a CPU another stage holds.
"""
import logging
import math
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

logger = logging.getLogger('numclip_mm.batch')

PROBE_TIMEOUT_S = 10.0      # one TCP connect to the cluster's address
CONNECT_TIMEOUT_S = 30.0    # the whole connection (probe + ray.init) to an existing cluster
CPU_BATCH_SIZE = 64        # images per forward pass of a CPU actor (GPU actors: 256)
MIB = 2 ** 20
ACTOR_BASE_MEMORY = 600 * MIB  # torch + mmpretrain + open_clip imported in one worker process (RSS, measured ~550 MiB)


class RayUnavailable(RuntimeError):
    """No Ray cluster answers at the address the job was given (or found)."""


def add_ray_vendored_path() -> None:
    """Put Ray's vendored packages (``ray/thirdparty_files``: colorama, psutil) on ``sys.path`` now, from the main
    thread, as ``import ray`` would. Ray adds the folder during its own import, which :class:`RayStarter` runs in a
    background thread; an import in the main thread at the same time (OpenCV's, via mmcv) saves ``sys.path`` and
    assigns the saved copy back, dropping the folder, and ``import ray`` then fails with ``No module named
    'colorama'`` wherever colorama is not also installed on its own."""
    import importlib.util
    spec = importlib.util.find_spec('ray')  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return
    vendored = os.path.join(list(spec.submodule_search_locations)[0], 'thirdparty_files')
    if os.path.isdir(vendored) and vendored not in sys.path:
        sys.path.insert(0, vendored)


# ---------------------------------------------------------------------------------------------------------------
# where the cluster is

def resolve_address(address: Optional[str]) -> Tuple[Optional[str], str]:
    """-> (address to connect to or None for a new private instance, where it came from), as ``ray.init`` resolves
    it: an explicit ``--address``, else ``RAY_ADDRESS``, else the cluster the last ``ray start`` on this machine
    recorded (Ray's ``ray_current_cluster`` file), else a new instance. ``'local'`` always means a new instance."""
    given = _given_address(address)
    if given is not None:
        return given
    from ray._private.services import find_bootstrap_address
    recorded = find_bootstrap_address(None)
    if recorded:
        return recorded, 'the cluster recorded by an earlier `ray start` on this machine'
    if address == 'auto':  # Ray's 'auto' requires a running cluster
        raise RayUnavailable('--address auto: no running Ray cluster found on this machine; start one with '
                             '`ray start --head`, or leave --address out to score on a private instance')
    return None, 'a new private instance (no RAY_ADDRESS, no running `ray start` cluster)'


def _given_address(address: Optional[str]) -> Optional[Tuple[Optional[str], str]]:
    """What :func:`resolve_address` decides without importing ray (``'local'``, ``--address``, ``RAY_ADDRESS``);
    None when only Ray's record of a ``ray start`` cluster can tell."""
    if address == 'local':
        return None, '--address local'
    if address not in (None, 'auto'):
        return address, '--address'
    env = os.environ.get('RAY_ADDRESS')
    if env:
        return (None, 'RAY_ADDRESS=local') if env == 'local' else (env, 'RAY_ADDRESS')
    return None


def _host_port(address: str) -> Tuple[str, int]:
    rest = address.split('://', 1)[-1].rstrip('/')
    host, _, port = rest.rpartition(':')
    if not host or not port.isdigit():
        raise RayUnavailable(f'not a Ray address: {address!r} (expected host:port or ray://host:port)')
    return host.strip('[]'), int(port)


def probe(address: str, source: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`RayUnavailable` unless something accepts a connection at ``address`` within ``timeout``."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as err:
        reason = 'timed out' if isinstance(err, socket.timeout) else (err.strerror or type(err).__name__)
    raise RayUnavailable(unreachable_message(address, source, reason))


def unreachable_message(address: str, source: str, reason: str) -> str:
    return (f'no Ray cluster answers at {address} (from {source}): {reason}. Start the cluster (`ray start --head`), '
            f'point --address or RAY_ADDRESS at a running one, or score on a private instance with --address local'
            + (' (`ray stop` clears the stale record of a cluster that is gone)' if 'ray start' in source else ''))


# ---------------------------------------------------------------------------------------------------------------
# starting or connecting, in the background

class RayStarter:
    """Connect to (or start) Ray in a background thread; :meth:`wait` for it, :meth:`close` to shut down what this
    process started. Nothing happens when Ray already runs in this process (a caller's own ``ray.init``)."""

    def __init__(self, address: Optional[str] = None, num_cpus: Optional[int] = None,
                 object_store_memory: Optional[int] = None):
        self.requested = address
        self.num_cpus, self.object_store_memory = num_cpus, object_store_memory
        self.started = False          # True when this process started or connected Ray (and must shut it down)
        self.private = False          # True when that is a new local instance
        self.address: Optional[str] = None
        self.source = ''              # where the address came from, once decided (by start() or the thread)
        self.error: Optional[BaseException] = None
        self.elapsed_s: Optional[float] = None
        self.session: Optional[str] = None  # session name of a private instance (its processes carry it)
        self.on_ready: List[Callable[[], None]] = []  # run once by wait(), on its thread, when Ray is up
        self._ready, self._stop, self._decided = threading.Event(), threading.Event(), threading.Event()
        self._started_at = time.monotonic()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> 'RayStarter':
        ray = sys.modules.get('ray')  # `import ray` itself (~1.5 s) happens in the background thread
        if ray is not None and ray.is_initialized():
            self._ready.set()
            return self
        if self.num_cpus is not None or self.object_store_memory is not None:
            self.requested = self.requested or 'local'  # options of a private instance imply one
        if self.requested in (None, 'local'):
            os.environ.setdefault('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', '0')  # keep a local instance on loopback
        # decided here when that needs no `import ray`; an address given (--address, RAY_ADDRESS) is probed here too,
        # so that a cluster that is gone ends the command at once, with nothing started
        given = _given_address(self.requested)
        if given is not None:
            self.address, self.source = given
            if self.address is not None:
                probe(self.address, self.source)
            self._decided.set()
        self._started_at = time.monotonic()
        add_ray_vendored_path()
        self._thread = threading.Thread(target=self._run, name='numclip-ray', daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            import ray
            if not self.source:  # not decided by start(): Ray's record of a `ray start` cluster tells
                self.address, self.source = resolve_address(self.requested)
                if self.address is not None:
                    probe(self.address, self.source)
            self._decided.set()
            if self.address is None:
                self.private = True
                ray.init(address='local', num_cpus=self.num_cpus, include_dashboard=False,
                         object_store_memory=self.object_store_memory, _node_ip_address='127.0.0.1')
                self.session = os.path.basename(ray._private.worker._global_node.get_session_dir_path())
            else:
                ray.init(address=self.address, log_to_driver=True)
            self.started = True
        except BaseException as err:  # noqa: BLE001  (handed to the waiting thread)
            self.error = err
        finally:
            self.elapsed_s = time.perf_counter() - t0
            self._decided.set()
            self._ready.set()
        if self.started:
            self._stop.wait()
            sys.modules['ray'].shutdown()

    def wait(self, timeout: Optional[float] = None) -> None:
        """Block until Ray is up; raise :class:`RayUnavailable` (or Ray's own error) when it is not. An existing
        cluster that has not answered within ``timeout`` (default :data:`CONNECT_TIMEOUT_S`) is given up."""
        while not self._ready.wait(0.2):  # short waits: signals reach the main thread promptly
            limit = timeout if timeout is not None else (CONNECT_TIMEOUT_S if self.address is not None else None)
            if limit is not None and time.monotonic() - self._started_at > limit:
                raise RayUnavailable(unreachable_message(self.address, self.source,
                                                         f'ray.init did not connect within {limit:.0f} s'))
        if self.error is not None:
            if isinstance(self.error, RayUnavailable):
                raise self.error
            if self.address is not None and isinstance(self.error, (ConnectionError, TimeoutError)):
                raise RayUnavailable(unreachable_message(self.address, self.source, str(self.error)))
            raise self.error
        callbacks, self.on_ready = self.on_ready, []
        for callback in callbacks:
            callback()

    def starts_private_instance(self) -> bool:
        """Whether this starter runs (or will run) a new Ray instance on this machine, as soon as that is decided
        (before Ray is up); False for a cluster, or when connecting failed."""
        if self._thread is None:
            return False
        while not self._decided.wait(0.2):  # short waits: signals reach the main thread promptly
            pass
        return self.address is None and self.error is None

    def describe(self) -> str:
        if self._thread is None and not self.started:
            return 'the Ray instance already running in this process'
        if self.private:
            return 'a new private Ray instance on this machine (--address local)'
        return f'the Ray cluster at {self.address} (from {self.source})'

    def close(self, timeout: float = 60.0) -> None:
        """Shut down what :meth:`start` began (waits for a start in progress first)."""
        if self._thread is None:
            return
        self._stop.set()
        if self._ready.wait(timeout):
            self._thread.join(timeout)
        self._thread = None
        if self.session:
            _reap(self.session)


def _reap(session: str, grace_s: float = 5.0) -> None:
    """Wait for the processes of a private instance this process shut down (workers exit once their raylet is
    gone); kill what is still there after ``grace_s``, so that nothing the job started outlives it."""
    import psutil

    def leftovers():
        found = []
        for proc in psutil.process_iter(['cmdline']):
            try:
                if any(session in part for part in proc.info['cmdline'] or ()):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return found
    deadline = time.monotonic() + grace_s
    while (procs := leftovers()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


# ---------------------------------------------------------------------------------------------------------------
# sizing

@dataclass(frozen=True)
class Sizing:
    """How the scoring graph uses the cluster."""
    num_actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    torch_threads: int
    decode_in_actor: bool
    cpus_per_decode_task: float
    batch_size: int

    def describe(self) -> str:
        device = (f'{self.gpus_per_actor:g} GPU + {self.cpus_per_actor:g} CPU each' if self.gpus_per_actor
                  else f'{self.cpus_per_actor:g} CPU each')
        decode = ('decoding in the actors' if self.decode_in_actor
                  else f'decoding in CPU tasks of {self.cpus_per_decode_task:g} CPU')
        return (f'{self.num_actors} inference actor(s) x {self.torch_threads} torch thread(s) ({device}), '
                f'{decode}, batches of {self.batch_size}')


CPU_WAIT_S = 30.0  # how long sizing waits for a CPU to be free before it reports a cluster with none


def cluster_resources(wait_s: float = CPU_WAIT_S) -> Dict[str, float]:
    """What :func:`size_pipeline` needs, read from the running Ray: available CPUs/GPUs/memory and the CPUs of the
    largest alive node (an actor cannot span nodes). When no CPU is free (actors of a job that just ended are still
    being torn down, or other jobs hold them), the available resources are read again for up to ``wait_s``
    seconds; a cluster that has CPUs but none free then is reported by :func:`size_pipeline` as having none."""
    import ray
    deadline = time.monotonic() + wait_s
    available = ray.available_resources()
    while float(available.get('CPU', 0)) <= 0 and ray.cluster_resources().get('CPU', 0) > 0 \
            and time.monotonic() < deadline:
        time.sleep(0.2)
        available = ray.available_resources()
    nodes = [n.get('Resources', {}) for n in ray.nodes() if n.get('Alive')]
    return dict(CPU=float(available.get('CPU', 0)), GPU=float(available.get('GPU', 0)),
                memory=float(available.get('memory', 0)),
                node_CPU=float(max((n.get('CPU', 0) for n in nodes), default=available.get('CPU', 0))))


def size_pipeline(resources: Dict[str, float], num_actors: Optional[int] = None,
                  cpus_per_actor: Optional[float] = None, num_gpus_per_actor: Optional[float] = None,
                  torch_threads: Optional[int] = None, decode_in_actor: Optional[bool] = None,
                  cpus_per_decode_task: Optional[float] = None, batch_size: Optional[int] = None,
                  actor_memory: int = ACTOR_BASE_MEMORY, work_items: Optional[int] = None) -> Sizing:
    """Actors x threads for ``resources`` (``{'CPU', 'GPU', 'memory', 'node_CPU'}`` as :func:`cluster_resources`);
    every argument given explicitly is kept.

    - GPUs present (or ``num_gpus_per_actor`` > 0): one actor per GPU; CPU tasks decode (at least half the CPUs go
      to them), each actor keeps at most one CPU for its host work.
    - CPU only: decoding happens in the actors (pixels never cross a process boundary), so one actor per CPU with
      one torch thread each keeps every core busy with decode and inference at once (while one actor decodes,
      another infers); fewer, wider actors when memory holds fewer model replicas (``actor_memory`` each, 70 % of
      the available memory), and no more actors than ``work_items`` (row groups: an actor takes whole ones, so a
      small job's spare CPUs become torch threads of fewer actors instead of actors that never get work).

    Never deadlocks: the actors' CPUs plus one decode task's fit in the available CPUs (the writers reserve none),
    so the actors can never hold every CPU a decode task waits for.
    """
    cpus = max(float(resources.get('CPU', 0)), 0.0)
    gpus = float(resources.get('GPU', 0))
    node_cpus = float(resources.get('node_CPU', cpus)) or cpus
    memory = float(resources.get('memory', 0))
    if cpus <= 0:
        raise ValueError(f'the Ray cluster has no CPU free (sizing waits up to {CPU_WAIT_S:.0f} s for one): nothing '
                         f'can read or decode images; wait for the jobs holding them or give --address local')
    gpu = num_gpus_per_actor > 0 if num_gpus_per_actor is not None else gpus >= 1
    if gpu:
        per_gpu = num_gpus_per_actor or 1.0
        actors = num_actors or max(1, int(gpus // per_gpu))
        in_actor = False if decode_in_actor is None else decode_in_actor
        actor_cpus = cpus_per_actor or (min(1.0, cpus / (2 * actors)) if not in_actor
                                        else min(node_cpus, cpus / actors))
        decode_cpus = cpus_per_decode_task or min(1.0, max(cpus - actors * actor_cpus, 0.0))
        threads = torch_threads or max(1, int(actor_cpus))
        return Sizing(actors, _floor(actor_cpus), per_gpu, threads, in_actor, decode_cpus or 0.5,
                      batch_size or 256)
    in_actor = True if decode_in_actor is None else decode_in_actor
    decode_cpus = cpus_per_decode_task or (0.0 if in_actor else min(1.0, cpus / 2))
    budget = cpus - (0 if in_actor else decode_cpus)
    if num_actors:
        actors = num_actors
        threads = torch_threads or max(1, int(budget // actors))
    else:
        threads = torch_threads or 1
        actors = max(1, int(budget // threads))
        by_memory = max(1, int(0.7 * memory // actor_memory)) if memory > 0 else actors
        by_work = max(1, work_items) if work_items is not None and in_actor else actors
        if min(by_memory, by_work) < actors:
            actors = min(by_memory, by_work)
            threads = torch_threads or max(1, int(min(budget / actors, node_cpus)))
    actor_cpus = cpus_per_actor or min(budget / actors, node_cpus, float(threads) if not num_actors else budget)
    return Sizing(actors, _floor(actor_cpus), 0.0, threads, in_actor, decode_cpus or 1.0, batch_size or CPU_BATCH_SIZE)


def _floor(cpus: float) -> float:
    """Down to Ray's resource precision (1e-4), so that N actors of ``cpus / N`` never ask for more than ``cpus``."""
    return math.floor(cpus * 1e4) / 1e4
