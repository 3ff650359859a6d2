"""Ordinal datasets, their image loading transform and the generated demo data (registered on import)."""
from .._setup import prepare_runtime

prepare_runtime()  # before the imports below: torchvision must be importable first

from .demo import generate_count_images, write_demo_catalog  # noqa: E402
from .demo_dataset import DemoCountDataset  # noqa: E402
from .ordinal_dataset import OrdinalDataset  # noqa: E402
from .sampling import few_shot_indices, label_shift_indices  # noqa: E402
from .task_datasets import AdienceDataset, AestheticsDataset, HCIDataset, MorphDataset, adience_group_index  # noqa: E402
from .transforms import (  # noqa: E402
                         DEFAULT_MAX_PIXELS,
                         ImageTooLargeError,
                         LoadOrdinalImage,
                         UnreadableImageError,
                         decode_bgr,
                         image_size_from_header,
                         read_image_bgr,
)

__all__ = [
    'OrdinalDataset', 'MorphDataset', 'HCIDataset', 'AestheticsDataset', 'AdienceDataset', 'DemoCountDataset',
    'LoadOrdinalImage', 'UnreadableImageError', 'ImageTooLargeError', 'DEFAULT_MAX_PIXELS', 'decode_bgr',
    'read_image_bgr', 'image_size_from_header', 'few_shot_indices', 'label_shift_indices',
    'adience_group_index', 'generate_count_images', 'write_demo_catalog'
]
