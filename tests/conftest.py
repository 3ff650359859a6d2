"""Shared fixtures. Importing numclip_mm first makes torchvision importable on CPU-only torch."""
import os

import numclip_mm  # noqa: F401  (registers components, installs the torchvision fallback)

os.environ.setdefault('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', '0')
