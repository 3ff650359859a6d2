"""The generated counting data (``demo.py``) as a registered dataset for configs."""
from typing import List, Optional, Sequence

from mmpretrain.datasets.base_dataset import BaseDataset
from mmpretrain.registry import DATASETS

from ..tasks import get_task
from .demo import generate_count_images
from .sampling import few_shot_indices

DEFAULT_NUM_SAMPLES = {'train': 1000, 'val': 200, 'test': 200}


@DATASETS.register_module()
class DemoCountDataset(BaseDataset):
    """The generated counting data set. Data infos hold ``img`` (HxWx3 uint8 BGR), ``img_shape``, ``ori_shape``,
    ``gt_value`` (the count) and ``gt_label`` (its bin of task 'count'); the pipeline may start right away with
    geometric transforms (or with ``LoadOrdinalImage``, which passes ``img`` through).

    Args:
        split (str): 'train', 'val' or 'test'; each uses its own seed stream.
        num_samples (int, optional): defaults to 1000 / 200 / 200.
        image_size (int): side of the square images.
        seed (int): base seed.
        task: the binning of the counts; defaults to 'count'.
        num_shots (int, optional): few-shot protocol (docs/method.md §11): keep ``num_shots`` of the
            ``num_samples`` generated images per count (seeded by ``seed``), all when a count has fewer.
    """

    def __init__(self, split: str = 'train', num_samples: Optional[int] = None, image_size: int = 64, seed: int = 0,
                 pipeline: Sequence = (), task='count', num_shots: Optional[int] = None,
                 metainfo: Optional[dict] = None, **kwargs):
        if split not in DEFAULT_NUM_SAMPLES:
            raise ValueError(f'DemoCountDataset split must be one of {sorted(DEFAULT_NUM_SAMPLES)}, got {split!r}')
        if num_shots is not None and int(num_shots) < 1:
            raise ValueError(f'num_shots must be >= 1, got {num_shots}')
        self.num_shots = None if num_shots is None else int(num_shots)
        self.split, self.image_size, self.seed = split, int(image_size), int(seed)
        self.num_samples = DEFAULT_NUM_SAMPLES[split] if num_samples is None else int(num_samples)
        self.task = get_task(task)
        metainfo = {'classes': self.task.concepts, **(metainfo or {})}
        super().__init__(ann_file='', pipeline=pipeline, metainfo=metainfo, **kwargs)

    def load_data_list(self) -> List[dict]:
        images, counts = generate_count_images(self.num_samples, self.image_size, self.seed, self.split)
        if self.num_shots is not None:
            keep = few_shot_indices(counts, self.num_shots, seed=self.seed)
            images, counts = images[keep], counts[keep]
        labels = self.task.value_to_bin(counts)
        shape = (self.image_size, self.image_size)
        return [dict(img=img[..., ::-1].copy(), img_shape=shape, ori_shape=shape, gt_value=float(v), gt_label=int(lb))
                for img, v, lb in zip(images, counts.tolist(), labels.tolist())]

    def extra_repr(self) -> List[str]:
        shots = [f'Shots per count: {self.num_shots}'] if self.num_shots is not None else []
        return [f'Split: {self.split}', f'Image size: {self.image_size}', f'Seed: {self.seed}', *shots]
