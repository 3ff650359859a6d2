"""Which engine runs a job: Ray (a cluster, GPUs, many cores) or threads of the driver (a small machine alone).

Ray pays for itself where processes do: a cluster's nodes, GPUs fed by decode tasks, more cores than one Python
process's threads keep busy, actors that die and are retried. On a small machine with no cluster named, its private
instance costs more than it gives (docs/benchmarks.md, 2 CPUs, the demo model: on Ray 0.65-0.80x the bare loop's
images/s end to end and up to 1.29x its CPU per image; in-process 1.29x and 0.85x), so ``--engine auto`` (the
default) scores in-process (:mod:`numclip_mm.batch.in_process`) when all of these hold, else on Ray:

- no cluster is named: no ``--address``/``RAY_ADDRESS``, no cluster recorded by a ``ray start`` on this machine, no
  Ray already running in this process (a caller's own ``ray.init``);
- no GPU: none visible on this machine, none asked for (``--num-gpus-per-actor``);
- no Ray-only option: ``--num-actors``, ``--cpus-per-actor``, ``--cpus-per-decode-task``, ``--decode-in``,
  ``--object-store-memory``, a custom actor class (the Python API);
- at most :data:`IN_PROCESS_MAX_CPUS` CPUs (threads of one process share one interpreter lock: measured here on 2).
"""
import glob
import os
import sys
from dataclasses import dataclass
from typing import Optional

ENGINES = ('auto', 'in-process', 'ray')
IN_PROCESS_MAX_CPUS = 8  # beyond this, auto picks Ray (the in-process engine was measured on 2 CPUs)


@dataclass(frozen=True)
class Engine:
    name: str       # 'in-process' or 'ray'
    reason: str     # why, for the log and the summary
    cpus: int = 0   # the in-process engine's threads


def machine_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a container's limit)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        with open('/sys/fs/cgroup/cpu.max') as f:
            quota, period = f.read().split()[:2]
        if quota != 'max':
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def gpus_visible() -> bool:
    """Whether this machine shows an NVIDIA GPU to this process (without importing torch or starting CUDA)."""
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    if visible is not None and visible.strip() in ('', '-1'):
        return False
    return bool(glob.glob('/dev/nvidia[0-9]*'))


def _ray_running_here() -> bool:
    ray = sys.modules.get('ray')  # (never imported for this question)
    return ray is not None and getattr(ray, 'is_initialized', lambda: False)()


def _ray_only_options(opts) -> list:
    names = dict(num_actors='--num-actors', cpus_per_actor='--cpus-per-actor',
                 cpus_per_decode_task='--cpus-per-decode-task', decode_in_actor='--decode-in',
                 object_store_memory='--object-store-memory')
    return [flag for name, flag in names.items() if getattr(opts, name) is not None]


def choose_engine(opts, actor_class=None) -> Engine:
    """The engine for ``opts`` (:class:`numclip_mm.batch.pipeline.ScoreOptions`; ``opts.engine`` 'auto',
    'in-process' or 'ray'). Raises :class:`numclip_mm.batch.catalog.ScoringSetupError` for an in-process engine
    asked for together with what only Ray does."""
    from .catalog import ScoringSetupError
    asked = opts.engine or 'auto'
    if asked not in ENGINES:
        raise ScoringSetupError(f'--engine must be one of {", ".join(ENGINES)}, got {asked!r}')
    cpus = int(opts.num_cpus) if opts.num_cpus else machine_cpus()
    if asked == 'ray':
        return Engine('ray', '--engine ray')
    ray_only = _ray_only_options(opts) + (['a custom actor class'] if actor_class is not None else []) + \
        (['--num-gpus-per-actor'] if opts.num_gpus_per_actor else [])
    if asked == 'in-process':  # (a RAY_ADDRESS in the environment or a Ray in this process is not asked for)
        given = ([f'--address {opts.address}'] if opts.address is not None else []) + ray_only
        if given:
            raise ScoringSetupError(f'--engine in-process scores in this process, without Ray: {", ".join(given)} '
                                    f'need Ray (leave --engine out, or give --engine ray)')
        return Engine('in-process', '--engine in-process', cpus)
    cluster = _named_cluster(opts)
    if cluster:
        return Engine('ray', cluster)
    if ray_only:
        return Engine('ray', f'{", ".join(ray_only)} given')
    if gpus_visible():
        return Engine('ray', 'this machine has a GPU (Ray actors infer on it, fed by decode tasks)')
    if cpus > IN_PROCESS_MAX_CPUS:
        return Engine('ray', f'{cpus} CPUs: more than one process\'s threads keep busy (in-process up to '
                             f'{IN_PROCESS_MAX_CPUS})')
    return Engine('in-process', f'no Ray cluster named, no GPU, {cpus} CPU(s): a private Ray instance would cost more '
                                f'than it gives on this machine (--engine ray to use one)', cpus)


def _named_cluster(opts) -> Optional[str]:
    """What names a Ray cluster for this job ('' when nothing does), in Ray's own resolution order
    (:func:`numclip_mm.batch.cluster.resolve_address`); ``'local'`` names a private Ray instance."""
    from .cluster import RayUnavailable, _given_address, resolve_address
    if _ray_running_here():
        return 'Ray already runs in this process'
    if opts.num_cpus and opts.address is None:  # sizes this machine's engine (with Ray: implies --address local)
        return ''
    given = _given_address(opts.address)  # --address or RAY_ADDRESS, decided without importing ray
    if given is None:
        try:
            given = resolve_address(opts.address)  # a cluster a `ray start` on this machine recorded
        except RayUnavailable:  # --address auto with no running cluster: Ray's path reports it
            return '--address auto'
        except ImportError:  # Ray is not installed: no cluster can have been recorded for it
            return '--address auto' if opts.address == 'auto' else ''
        if given[0] is None:  # nothing recorded: a new instance, which this job need not start
            return ''
    address, source = given
    return f'{source} ({address or "a private Ray instance"})'
