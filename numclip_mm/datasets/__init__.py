"""Ordinal datasets, their image loading transform and the generated demo data (registered on import)."""
from .demo import generate_count_images, write_demo_catalog
from .demo_dataset import DemoCountDataset
from .ordinal_dataset import OrdinalDataset
from .sampling import few_shot_indices, label_shift_indices
from .task_datasets import AdienceDataset, AestheticsDataset, HCIDataset, MorphDataset, adience_group_index
from .transforms import LoadOrdinalImage, UnreadableImageError, decode_image

__all__ = [
    'OrdinalDataset', 'MorphDataset', 'HCIDataset', 'AestheticsDataset', 'AdienceDataset', 'DemoCountDataset',
    'LoadOrdinalImage', 'UnreadableImageError', 'decode_image', 'few_shot_indices', 'label_shift_indices',
    'adience_group_index', 'generate_count_images', 'write_demo_catalog'
]
