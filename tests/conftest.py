"""Shared fixtures. Registering numclip_mm first makes torchvision importable on CPU-only torch."""
import os
import signal

import pytest
import torch

import numclip_mm.register  # noqa: F401  (registers components, installs the torchvision fallback)

os.environ.setdefault('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', '0')


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


# Modules that start Ray, tools or other processes, slowest first. `make test` runs the suite on one worker per core
# with whole modules as the unit (-n auto --dist loadfile --no-loadscope-reorder): each worker takes the next module
# in this order, so that no long module is left to start last. Within a module the order is kept.
SLOW_MODULES_FIRST = ('test_batch_scorer', 'test_batch_s3', 'test_batch_cluster', 'test_batch_cli', 'test_tools',
                      'test_paper_rehearsal', 'test_batch_catalogs', 'test_batch_bounds', 'test_checkpoint_loading')


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))
