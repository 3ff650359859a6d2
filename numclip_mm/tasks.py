"""Ordinal tasks as data: the bins, their language concepts, the prompt context and the regressor anchors.

A task is everything NumCLIP needs to know about a number range. Datasets use ``edges`` to map a value to its
bin; the model uses ``concepts``/``context`` to build prompts and ``anchors`` for the fine stage. A new task is a
new entry here or an inline ``dict`` in a config: no code. The table and its choices: docs/method.md §2.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np


@dataclass(frozen=True)
class OrdinalTask:
    """Bins of an ordinal range.

    Args:
        name: short identifier, also used as the default output column prefix.
        edges: K lower bin edges, strictly increasing. Bin k holds ``edges[k] <= y < edges[k+1]``; the last bin is
            open above. Values below ``edges[0]`` (or above ``upper``) are rejected, not clipped.
        concepts: K phrases, one per bin ("child", "teenager", ...).
        context: the prompt prefix shared by all bins ("age estimation: the person is a").
        anchors: K numbers the regressor scales and the expectation averages; defaults to ``edges``.
        upper: optional inclusive upper limit of the last bin.
    """
    name: str
    edges: Tuple[float, ...]
    concepts: Tuple[str, ...]
    context: str
    anchors: Optional[Tuple[float, ...]] = None
    upper: Optional[float] = None

    def __post_init__(self):
        object.__setattr__(self, 'edges', tuple(float(e) for e in self.edges))
        object.__setattr__(self, 'concepts', tuple(str(c) for c in self.concepts))
        anchors = self.edges if self.anchors is None else tuple(float(a) for a in self.anchors)
        object.__setattr__(self, 'anchors', anchors)
        k = len(self.edges)
        if k < 2:
            raise ValueError(f'task {self.name!r}: need at least 2 bins, got {k}')
        if len(self.concepts) != k or len(self.anchors) != k:
            raise ValueError(f'task {self.name!r}: {k} edges but {len(self.concepts)} concepts and '
                             f'{len(self.anchors)} anchors; they must match')
        # NaN compares false with everything, so it would pass the order check below and leave a bin no value
        # can ever reach; an infinite edge or anchor makes a bin without a finite value or a regressor target
        for what, numbers in (('edges', self.edges), ('anchors', self.anchors),
                              ('upper', () if self.upper is None else (self.upper,))):
            if not np.isfinite(np.asarray(numbers, dtype=np.float64)).all():
                hint = ' (upper=None leaves the last bin open)' if what == 'upper' else ''
                raise ValueError(f'task {self.name!r}: {what} must be finite numbers, got {numbers}{hint}')
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError(f'task {self.name!r}: edges must be strictly increasing, got {self.edges}')
        if self.upper is not None and self.upper < self.edges[-1]:
            raise ValueError(f'task {self.name!r}: upper={self.upper} lies below the last edge {self.edges[-1]}')

    @property
    def num_bins(self) -> int:
        return len(self.edges)

    @property
    def value_range(self) -> Tuple[float, float]:
        """The numbers the task's values can take: ``(edges[0], upper)``, ``upper`` inf when the last bin is open
        (what predictions are clamped to and intervals clipped to)."""
        return float(self.edges[0]), float('inf') if self.upper is None else float(self.upper)

    def in_range(self, values) -> np.ndarray:
        """Boolean mask of values that fall in some bin."""
        values = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(values) & (values >= self.edges[0])
        if self.upper is not None:
            ok &= values <= self.upper
        return ok

    def value_to_bin(self, values) -> np.ndarray:
        """Vectorised bin index of each value; raises on values outside the bins."""
        values = np.asarray(values, dtype=np.float64)
        bad = ~self.in_range(values)
        if bad.any():
            raise ValueError(f'task {self.name!r}: values {values[bad][:5].tolist()} lie outside the bins '
                             f'[{self.edges[0]}, {self.upper if self.upper is not None else "inf"}]')
        return np.searchsorted(np.asarray(self.edges), values, side='right') - 1

    def nearest_bin(self, values) -> np.ndarray:
        """Vectorised bin index of each *prediction*: the bin of the value clamped into ``[edges[0], upper]``, so a
        reported (clamped) value and its label always agree (``nearest_bin(v) == value_to_bin(v)`` for every v in
        range). Raises on non-finite values, which name no bin."""
        values = np.asarray(values, dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(f'task {self.name!r}: non-finite predictions {values[bad][:5].tolist()} have no bin')
        return np.clip(np.searchsorted(np.asarray(self.edges), values, side='right') - 1, 0, self.num_bins - 1)

    def anchors_tensor(self):
        """The anchors as a float32 torch tensor (torch is imported here only: the task table itself is cheap)."""
        import torch
        return torch.tensor(self.anchors, dtype=torch.float32)


def graded_task(name: str, concepts: Sequence[str], context: str) -> OrdinalTask:
    """A task whose labels already are K grades 0..K-1 (HCI decades, aesthetic grades, Adience groups)."""
    k = len(concepts)
    return OrdinalTask(name, tuple(range(k)), tuple(concepts), context, upper=k - 1)


def rank_task(name: str, values: Sequence[float], context: str, words: Optional[Sequence[str]] = None) -> OrdinalTask:
    """One bin per integer rank (the OrdinalCLIP baseline); the concepts are the numbers themselves unless given."""
    values = tuple(float(v) for v in values)
    concepts = tuple(words) if words is not None else tuple(f'{v:g}' for v in values)
    return OrdinalTask(name, values, concepts, context, upper=values[-1])


TASKS: Dict[str, OrdinalTask] = {t.name: t for t in [
    # MORPH II: thresholds on the true age (the released code applies them to age - 1; docs/method.md §2).
    OrdinalTask('age', (0, 13, 19, 35, 65),
                ('child', 'teenager', 'young adult', 'middle adult', 'older adult'),
                'age estimation: the person is a', upper=120),
    # HCI: labels are decades 0..4 (1930s..1970s). The official concept file is missing; decades are the natural words.
    graded_task('hci', ('1930s', '1940s', '1950s', '1960s', '1970s'), 'a photo taken in the'),
    # Image aesthetics: 5 grades; the concept words of the official code are missing, these are the dataset's names.
    graded_task('aesthetics', ('unacceptable', 'flawed', 'ordinary', 'professional', 'exceptional'),
                'aesthetics assessment: the quality of the photo is'),
    # Adience: 8 age groups, labels are group indices 0..7.
    graded_task('adience', ('baby', 'toddler', 'child', 'teenager', 'young adult', 'adult', 'middle adult',
                            'older adult'), 'age estimation from facial image: the person is a'),
    # The embedded demo: images showing 0..9 objects, binned into 5 everyday quantity words.
    OrdinalTask('count', (0, 2, 4, 6, 8), ('none', 'few', 'several', 'many', 'lots'),
                'a picture of objects, there are', anchors=(0, 2, 4, 6, 8), upper=9),
    # The OrdinalCLIP baseline's rank tasks: one bin per count 0..9 and per MORPH II age 16..77.
    rank_task('count_ranks', range(10), 'a picture of objects, the number of objects is'),
    rank_task('age_ranks', range(16, 78), 'age estimation: the age of the person is'),
]}


TaskLike = Union[str, OrdinalTask, dict]


def get_task(task: TaskLike) -> OrdinalTask:
    """Resolve a task given by name, as a dict (from a config) or as an :class:`OrdinalTask`."""
    if isinstance(task, OrdinalTask):
        return task
    if isinstance(task, str):
        if task not in TASKS:
            raise KeyError(f'unknown task {task!r}; known: {sorted(TASKS)} '
                           f'(or give a dict with edges/concepts/context)')
        return TASKS[task]
    if isinstance(task, dict):
        task = dict(task)
        base = task.pop('base', None)
        if base is not None:  # override some fields of a known task, e.g. dict(base='age', concepts=[...])
            fields = {f: getattr(get_task(base), f) for f in ('name', 'edges', 'concepts', 'context', 'upper')}
            if 'edges' not in task and 'anchors' not in task:
                fields['anchors'] = get_task(base).anchors
            fields.update(task)
            task = fields
        return OrdinalTask(**task)
    raise TypeError(f'task must be a name, dict or OrdinalTask, got {type(task).__name__}')



DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def apply_config_task(cfg):
    """Make a config's top-level ``task`` (a name, a dict as for :func:`get_task`, or an OrdinalTask) the task of its
    model's head and of every dataset its dataloaders build (a wrapper's inner datasets too), so that a config sets
    its task in one line; a config without ``task`` is returned as it is. Changes ``cfg`` (any mapping, e.g. an
    MMEngine Config) in place and returns it. The Runner (:class:`numclip_mm.engine.StrictLoadRunner`),
    :func:`numclip_mm.inference.load_config` and tools/check_dataset.py apply it.

    Why a variable and not ``{{_base_.task}}``: MMEngine resolves such references when the base file is read, so a
    child config could not change the task its base's head and datasets were written with.
    """
    task = cfg.get('task')
    if task is None:
        return cfg
    get_task(task)  # a malformed task fails here, before anything is built
    head = (cfg.get('model') or {}).get('head')
    if head is not None:
        head['task'] = task
    for name in DATALOADERS:
        loader = cfg.get(name)
        if loader and loader.get('dataset') is not None:
            _set_dataset_task(loader['dataset'], task)
    return cfg


def _set_dataset_task(dataset, task) -> None:
    """The task of one dataset config; wrappers (``dataset=``, ``datasets=[...]``) pass it to what they wrap."""
    if dataset.get('datasets') is not None:
        for inner in dataset['datasets']:
            _set_dataset_task(inner, task)
    elif dataset.get('dataset') is not None:
        _set_dataset_task(dataset['dataset'], task)
    else:
        dataset['task'] = task
