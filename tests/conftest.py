"""Shared fixtures. Importing numclip_mm first makes torchvision importable on CPU-only torch."""
import os

import pytest
import torch

import numclip_mm  # noqa: F401  (registers components, installs the torchvision fallback)

os.environ.setdefault('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', '0')


@pytest.fixture(scope='module')
def one_torch_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine two threads can be 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
