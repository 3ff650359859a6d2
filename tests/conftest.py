"""Shared fixtures. Registering numclip_mm first makes torchvision importable on CPU-only torch."""
import contextlib
import gc
import os
import signal

import pytest
import torch

import numclip_mm.register  # noqa: F401  (registers components, installs the torchvision fallback)

os.environ.setdefault('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', '0')
# the scorer's graph cache (numclip_mm.batch.graph_cache) stays off unless a test gives it a folder: a trace kept by
# one test would spare the next one the build and trace it checks, and nothing may go to the user's ~/.cache
os.environ['NUMCLIP_MM_GRAPH_CACHE'] = 'off'


def pytest_collection_finish(session):
    """Freeze what collection imported (torch, mmpretrain, Ray, ...: ~500,000 objects) so that the collector's full
    passes during the tests skip it: measured on three model/tool modules, their GC time went from 3.8-4.3 s to
    1.8 s and their wall time from 57-61 s to 48 s (numclip-score freezes the same objects: numclip_mm.batch.score)."""
    gc.collect()
    gc.freeze()


# ---------------------------------------------------------------- the in-process Ray, shared
RAY_FIXTURE = 'ray_session'


def _uses_ray(item) -> bool:
    return RAY_FIXTURE in getattr(item, 'fixturenames', ())


def pytest_collection_modifyitems(session, config, items):
    """Modules whose tests use the in-process Ray (:func:`ray_session`) run back to back, from where the first of
    them is, so that one instance serves them all: each Ray start and Ray Data's first job cost ~8 s here. Other
    modules keep their order."""
    modules = {}
    for item in items:
        modules.setdefault(item.module, []).append(item)
    shared = [m for m, its in modules.items() if any(_uses_ray(i) for i in its)]
    ordered = []
    for module, its in modules.items():
        if module in shared:
            if module is shared[0]:
                ordered += [i for m in shared for i in modules[m]]
        else:
            ordered += its
    items[:] = ordered


_shared_ray = contextlib.ExitStack()  # what ray_session and s3_server set up, undone after their last user


@pytest.fixture(scope='session')
def s3_server():
    """moto's S3 server on loopback, with fake credentials and the endpoint in this process's environment (and in
    fsspec's configuration) while the shared Ray lives; None without moto. Started before that Ray, whose workers
    inherit the environment it starts with, so test_batch_s3's jobs run on it (a job-level ``runtime_env`` would
    give every actor a fresh process: ~0.7 s more per actor start here)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        yield None
        return
    import fsspec.config
    from helpers import free_port
    port = free_port()
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=port, verbose=False)
    server.start()
    _shared_ray.callback(server.stop)
    endpoint = f'http://127.0.0.1:{port}'
    patch = pytest.MonkeyPatch()
    _shared_ray.callback(patch.undo)
    for name, value in dict(AWS_ACCESS_KEY_ID='testing', AWS_SECRET_ACCESS_KEY='testing',
                            AWS_DEFAULT_REGION='us-east-1', AWS_ENDPOINT_URL=endpoint,
                            FSSPEC_S3_ENDPOINT_URL=endpoint).items():
        patch.setenv(name, value)
    patch.setitem(fsspec.config.conf, 's3', dict(fsspec.config.conf.get('s3', {})))
    fsspec.config.set_conf_env(fsspec.config.conf)  # FSSPEC_S3_* are read at fsspec's import: applied here too
    yield endpoint
    _shared_ray.close()


@pytest.fixture(scope='session')
def ray_session(s3_server):
    """A 2-CPU Ray in this process on loopback, started by its first user and shut down after its last one (see
    :func:`pytest_runtest_teardown`), not at the end of the session. Its workers see :func:`s3_server`."""
    import ray
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address='127.0.0.1', log_to_driver=False)
    _shared_ray.callback(ray.shutdown)
    yield ray
    _shared_ray.close()


@pytest.hookimpl(trylast=True)  # after the test's own fixtures are torn down
def pytest_runtest_teardown(item, nextitem):
    """Shut the shared Ray (and the S3 server beside it) down once no test left uses it: an idle instance costs CPU
    while later tests start Ray instances of their own. (The fixtures' cached values are never requested again;
    their finalizers then have nothing left to undo.)"""
    if not _uses_ray(item):
        return
    items = item.session.items
    rest = items[items.index(nextitem):] if nextitem is not None else []
    if not any(_uses_ray(i) for i in rest):
        _shared_ray.close()


@pytest.fixture(scope='module')
def one_torch_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine two threads can be 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def module_timeout(request):
    """Tests of a module that sets ``TEST_TIMEOUT_S`` fail after that many seconds instead of hanging (Ray
    pipelines can wait forever for resources that never come)."""
    seconds = getattr(request.module, 'TEST_TIMEOUT_S', None)
    if not seconds:
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f'test exceeded {seconds} s')
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
