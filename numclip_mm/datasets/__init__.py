"""Ordinal datasets, their image loading transform and the generated demo data (registered on import)."""
from .demo import generate_count_images, write_demo_catalog
from .demo_dataset import DemoCountDataset
from .ordinal_dataset import OrdinalDataset
from .sampling import few_shot_indices, label_shift_indices
from .task_datasets import AdienceDataset, AestheticsDataset, HCIDataset, MorphDataset, adience_group_index
from .transforms import (DEFAULT_MAX_PIXELS, ImageTooLargeError, LoadOrdinalImage, UnreadableImageError, decode_bgr,
                         image_size_from_header, read_image_bgr)

__all__ = [
    'OrdinalDataset', 'MorphDataset', 'HCIDataset', 'AestheticsDataset', 'AdienceDataset', 'DemoCountDataset',
    'LoadOrdinalImage', 'UnreadableImageError', 'ImageTooLargeError', 'DEFAULT_MAX_PIXELS', 'decode_bgr',
    'read_image_bgr', 'image_size_from_header', 'few_shot_indices', 'label_shift_indices',
    'adience_group_index', 'generate_count_images', 'write_demo_catalog'
]
