"""numclip-mm: NumCLIP ordinal regression as an MMPretrain/MMEngine plugin.

Dependency ranges only: the tested set is pinned in requirements/constraints.txt. torch is required as a range
(``torch>=2.1``), never pinned, so that pip keeps the torch (CPU or CUDA build) already installed; install torch
first and pass the constraints file to every later pip call (see docs/getting_started.md), or pip may pull a CUDA
build.

Package data: the tiny open_clip model configs (``numclip_mm/models/model_configs/*.json``) ship in the wheel and the
sdist (MANIFEST.in), so ``numclip-demo``/``numclip-tiny`` exist in non-editable installs too; so do the demo CLIP's
pretrained weights (``numclip_mm/models/pretrained/``, tag ``numclip-tiny-synth``, about 7 MB in fp16).
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

version = re.search(r"__version__ = '([^']+)'", Path('numclip_mm/version.py').read_text()).group(1)

setup(
    name='numclip-mm',
    version=version,
    description='NumCLIP (ECCV 2024) CLIP-based ordinal regression for MMPretrain, with a Ray batch scorer',
    long_description=Path('README.md').read_text() if Path('README.md').exists() else '',
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['numclip_mm', 'numclip_mm.*']),
    package_data={'numclip_mm': ['models/model_configs/*.json', 'models/pretrained/*.safetensors',
                                 'models/pretrained/*.json']},
    include_package_data=True,
    install_requires=[
        'torch>=2.1',
        'torchvision>=0.16',
        'mmengine>=0.10,<0.11',
        'mmcv-lite>=2.0,<2.3',
        'mmpretrain>=1.2,<1.3',
        'open_clip_torch>=2.24',
        'numpy>=1.24',
        'pandas>=1.5',
        'pyarrow>=14',
        'matplotlib>=3.6',
        'Pillow>=9',
    ],
    extras_require={
        # <2.64: the scorer passes retry settings (max_retries, max_restarts, max_task_retries) to map_batches as
        # remote args, which Ray 2.60 warns will be removed in 2.64 with no named replacement yet
        'batch': ['ray[default,data]>=2.40,<2.64'],
        # datasets and polars: the catalog tests write Parquet with the writers data teams use
        'tests': ['pytest>=8', 'ray[default,data]>=2.40,<2.64', 'moto[server]>=5', 's3fs', 'boto3', 'psutil', 'ruff',
                  'datasets>=3', 'polars>=1'],
        's3': ['s3fs'],
    },
    entry_points={'console_scripts': ['numclip-score = numclip_mm.batch.score:cli']},
    license='Apache-2.0',
)
