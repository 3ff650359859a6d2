"""The public ordinal benchmarks as thin layouts over :class:`OrdinalDataset`: where the lists are, which task.

Only the file locations and label conventions differ; parsing, binning, sampling and errors are OrdinalDataset's.
"""
from typing import Sequence, Union

import numpy as np
import pandas as pd
from mmpretrain.registry import DATASETS

from .ordinal_dataset import OrdinalDataset, read_csv_table, read_text_bytes

AESTHETICS_CATEGORIES = ('animals', 'nature', 'people', 'urban')
# Adience's 8 age groups, as written in the fold files.
ADIENCE_GROUPS = ((0, 2), (4, 6), (8, 12), (15, 20), (25, 32), (38, 43), (48, 53), (60, 100))


@DATASETS.register_module()
class MorphDataset(OrdinalDataset):
    """MORPH II with the OrdinalCLIP/NumCLIP lists (``ET_proto_train.txt``: ``path age`` per line), task 'age'.

    Bins are applied to the true age (docs/method.md §2, §12: the released code's ``age - 1`` shift is not
    reproduced).
    """

    def __init__(self, ann_file='ET_proto_train.txt', task='age', **kwargs):
        super().__init__(ann_file=ann_file, task=task, **kwargs)


@DATASETS.register_module()
class HCIDataset(OrdinalDataset):
    """Historical Colour Image dating: ``labels/fold_{fold}/{split}.txt`` with ``path decade`` lines.

    Args:
        fold (int): the split index. split (str): 'train', 'val' or 'test'.
        one_based (bool): labels are 1..5 (the released code's convention) instead of 0..4.
        ann_file (str, optional): overrides the fold/split file.

    List paths are relative to ``data_root``/``data_prefix`` (``data_prefix`` defaults to the root itself).
    """

    def __init__(self, fold: int = 0, split: str = 'train', one_based: bool = False, ann_file=None, task='hci',
                 **kwargs):
        if split not in ('train', 'val', 'test'):
            raise ValueError(f'HCIDataset split must be train, val or test, got {split!r}')
        self.fold, self.split = fold, split
        ann_file = ann_file or f'labels/fold_{fold}/{split}.txt'
        super().__init__(ann_file=ann_file, task=task, value_offset=-1 if one_based else 0, **kwargs)


@DATASETS.register_module()
class AestheticsDataset(OrdinalDataset):
    """Image Aesthetics (Schifanella et al.): ``{category}_{split}.txt`` lists with ``path grade`` lines.

    Args:
        category (str | list[str]): one of animals/nature/people/urban, a list of them, or 'all' (the four,
            concatenated: the "overall" protocol).
        split (str): 'train' or 'test' (the released configs validate on the test list).
        one_based (bool): grades are 1..5 instead of 0..4.

    List paths are relative to ``data_root``/``data_prefix`` (``data_prefix`` defaults to the root itself).
    """

    def __init__(self, category: Union[str, Sequence[str]] = 'all', split: str = 'train', one_based: bool = False,
                 task='aesthetics', **kwargs):
        cats = AESTHETICS_CATEGORIES if category == 'all' else ([category] if isinstance(category, str)
                                                                else list(category))
        unknown = sorted(set(cats) - set(AESTHETICS_CATEGORIES))
        if unknown:
            raise ValueError(f'unknown aesthetics categories {unknown}; known: {AESTHETICS_CATEGORIES} or "all"')
        self.categories, self.split = tuple(cats), split
        super().__init__(ann_file=[f'{c}_{split}.txt' for c in cats], task=task,
                         value_offset=-1 if one_based else 0, **kwargs)


def adience_group_index(age: pd.Series) -> np.ndarray:
    """Group index of Adience age strings; NaN where no single group holds the age.

    ``(a, b)`` maps to the one group containing the whole interval (so the file's stray ``(38, 42)`` or
    ``(27, 32)`` join their group), a single number to the one group containing it; ``None``, ``(8, 23)`` or
    ``35`` stay unmapped.
    """
    parts = age.astype(str).str.extract(r'^\s*\(?\s*(\d+(?:\.\d+)?)\s*(?:,\s*(\d+(?:\.\d+)?))?\s*\)?\s*$')
    lo = pd.to_numeric(parts[0], errors='coerce').to_numpy(dtype=np.float64)
    hi = pd.to_numeric(parts[1], errors='coerce').to_numpy(dtype=np.float64)
    hi = np.where(np.isnan(hi), lo, hi)
    groups = np.asarray(ADIENCE_GROUPS, dtype=np.float64)
    inside = (lo[:, None] >= groups[None, :, 0]) & (hi[:, None] <= groups[None, :, 1])
    one = inside.sum(axis=1) == 1
    return np.where(one, inside.argmax(axis=1), np.nan)


@DATASETS.register_module()
class AdienceDataset(OrdinalDataset):
    """Adience 5-fold cross-validation from the released ``fold_{k}_data.txt`` files (tab-separated, header row).

    Image path: ``faces/{user_id}/coarse_tilt_aligned_face.{face_id}.{original_image}``; the value is the age-group
    index 0..7 (task 'adience'). Rows whose age maps to no single group raise, unless ``drop_unlabelled=True``
    drops them (counted in ``num_dropped`` and logged).

    Args:
        folds (list[int]): the folds to concatenate (four for training, one for testing).
        face_dir (str): the folder of the face crops inside ``data_prefix``.
    """

    def __init__(self, folds: Sequence[int] = (0,), face_dir: str = 'faces', task='adience', **kwargs):
        self.folds, self.face_dir = tuple(int(k) for k in folds), face_dir
        super().__init__(ann_file=[f'fold_{k}_data.txt' for k in self.folds], task=task, path_column='path',
                         value_column='age', **kwargs)

    def read_table(self, ann_file: str) -> pd.DataFrame:
        frame = read_csv_table(ann_file, read_text_bytes(ann_file, self.max_line_bytes), sep='\t')
        frame.columns = [c.strip() for c in frame.columns]
        missing = [c for c in ('user_id', 'original_image', 'face_id', 'age') if c not in frame.columns]
        if missing:
            raise ValueError(f'{ann_file}: missing column(s) {missing}; the file has {list(frame.columns)}')
        frame['path'] = (self.face_dir + '/' + frame['user_id'].str.strip() + '/coarse_tilt_aligned_face.'
                         + frame['face_id'].str.strip() + '.' + frame['original_image'].str.strip())
        return frame

    def parse_values(self, raw: pd.Series) -> np.ndarray:
        return adience_group_index(raw)
