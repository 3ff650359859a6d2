"""Shared fixtures. Registering numclip_mm first makes torchvision importable on CPU-only torch."""
import gc
import os
import signal

import pytest
import torch

import numclip_mm.register  # noqa: F401  (registers components, installs the torchvision fallback)

os.environ.setdefault('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', '0')


def pytest_collection_finish(session):
    """Freeze what collection imported (torch, mmpretrain, Ray, ...: ~500,000 objects) so that the collector's full
    passes during the tests skip it: measured on three model/tool modules, their GC time went from 3.8-4.3 s to
    1.8 s and their wall time from 57-61 s to 48 s (numclip-score freezes the same objects: numclip_mm.batch.score)."""
    gc.collect()
    gc.freeze()


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
