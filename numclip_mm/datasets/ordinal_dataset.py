"""A generic ordinal-regression dataset: an annotation table of (image, number) pairs, binned by an OrdinalTask.

One class reads every annotation layout the task loaders need (CSV, Parquet, and the whitespace ``path value`` lists
of OrdinalCLIP/NumCLIP), so the task-specific datasets only say where their files are.
"""
import csv
import io
import logging
import os.path as osp
import warnings
from typing import Dict, List, Optional, Sequence, Union

import mmengine
import numpy as np
import pandas as pd
from mmengine.fileio import join_path
from mmengine.logging import print_log
from mmengine.utils import is_abs
from mmpretrain.datasets.base_dataset import BaseDataset
from mmpretrain.registry import DATASETS

from ..tasks import TaskLike, get_task
from .image_check import find_unreadable_images, log_progress
from .sampling import few_shot_indices, label_shift_indices
from .transforms import DEFAULT_MAX_PIXELS, LoadOrdinalImage, UnreadableImageError

# check_images='auto' reads every image up front when the data set has at most this many samples (seconds of work).
CHECK_IMAGES_AUTO_LIMIT = 2000
# The longest line a text annotation file may hold: a path, a value and a few columns fit many times over; a binary
# file or a missing line break stops the read here instead of filling memory (a 1 GB line cost 8.7 GB of RSS).
MAX_LINE_BYTES = 1 << 20
_BLOCK_BYTES = 1 << 20


def _position(ann_file: str, row: int, kind: str) -> str:
    """Human position of a table row: physical line for text files, row index for Parquet."""
    return f'{ann_file}: {kind} {row}'


def read_text_bytes(ann_file: str, max_line_bytes: int = MAX_LINE_BYTES) -> bytes:
    """The bytes of a text annotation file (any mmengine file backend), read in 1 MiB blocks; a line longer than
    ``max_line_bytes`` stops the read with a ValueError naming the file and the line, after at most one block more
    than the limit was read (memory stays bounded by the file's legitimate size, never by one line)."""
    if not mmengine.fileio.exists(ann_file):
        raise FileNotFoundError(f'annotation file {ann_file} does not exist')
    blocks, line, run = [], 1, 0  # run: bytes since the last line break
    with mmengine.fileio.get_local_path(ann_file) as local, open(local, 'rb') as f:
        while block := f.read(_BLOCK_BYTES):
            breaks = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
            # lengths of the lines this block ends (the first continues the previous block's last line), and the
            # length of the unfinished line at its end
            ends = np.diff(np.concatenate([[-1], breaks])) - 1
            if len(ends):
                ends[0] += run
            run = run + len(block) if not len(breaks) else len(block) - 1 - int(breaks[-1])
            over = np.flatnonzero(ends > max_line_bytes)
            if len(over) or run > max_line_bytes:
                at = line + (int(over[0]) if len(over) else len(breaks))
                raise ValueError(f'{_position(ann_file, at, "line")}: longer than {max_line_bytes} bytes (a binary '
                                 f'file, or a missing line break?); raise max_line_bytes if such lines are meant')
            line += len(breaks)
            blocks.append(block)
    return b''.join(blocks)


def decode_text(ann_file: str, content: bytes, encoding: str = 'utf-8-sig') -> str:
    """An annotation file's text, a leading byte-order mark removed (editors on Windows write one); a ValueError
    naming the file and the line where it is not UTF-8."""
    try:
        return content.decode(encoding)
    except UnicodeDecodeError as err:
        line = content[:err.start].count(b'\n') + 1
        raise ValueError(f'{_position(ann_file, line, "line")}: not UTF-8 text ({err.reason} at byte {err.start})'
                         ) from None


def read_csv_table(ann_file: str, content: bytes, sep: str = ',') -> pd.DataFrame:
    """A CSV/TSV annotation file as strings with a ``_row`` column (its physical line, header = line 1).

    Malformed files (0 bytes, a row with more fields than the header, an open quote, not UTF-8) raise a ValueError
    naming the file and the line, instead of a bare pandas traceback. A row with fewer fields leaves the missing
    values empty, which the value check then reports with its line.
    """
    if not content.strip():
        raise ValueError(f'{ann_file}: empty annotation file ({len(content)} bytes); expected a header line '
                         f'naming the columns, then one row per image')
    text = decode_text(ann_file, content)
    try:
        with warnings.catch_warnings():
            # index_col=False: pandas would otherwise turn an extra field on every row into a silent index column
            warnings.simplefilter('error', pd.errors.ParserWarning)
            frame = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False,
                                skip_blank_lines=False, index_col=False)
    except (pd.errors.ParserError, pd.errors.ParserWarning) as err:
        raise ValueError(f'{ann_file}: {_describe_bad_row(text, sep)} ({str(err).strip()})') from None
    frame['_row'] = np.arange(len(frame)) + 2  # line 1 is the header
    return frame


def _describe_bad_row(text: str, sep: str) -> str:
    """Where a CSV text breaks: the first row whose field count differs from the header's, or an open quote."""
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    try:
        width = len(next(reader))
        for fields in reader:
            if len(fields) > width:
                return (f'line {reader.line_num}: {len(fields)} fields where the header has {width} '
                        f'({sep.join(fields)!r})')
    except csv.Error as err:
        return f'line {reader.line_num}: {err}'
    return 'malformed CSV (an unterminated quote?)'


@DATASETS.register_module()
class OrdinalDataset(BaseDataset):
    """Images with a number each, binned by an ordinal task.

    Every data info holds ``img_path`` (joined with ``data_prefix``) or ``img_bytes`` (when ``image_column`` is
    set), ``gt_value`` (the number, float) and ``gt_label`` (its bin, int). The pipeline should start with
    :class:`LoadOrdinalImage` and end with ``PackInputs(algorithm_keys=['gt_value'])``.

    Args:
        ann_file (str | list[str]): annotation file(s), concatenated in order. ``.csv``/``.tsv`` and
            ``.parquet``/``.pq`` are tables with named columns; anything else is a list file with one
            ``relative/path value`` per line (blank lines and lines starting with ``#`` are skipped).
        task (str | dict | OrdinalTask): the bins. Defaults to 'age'.
        data_root (str): root of ``ann_file`` and ``data_prefix``.
        data_prefix (str | dict): image folder (or ``dict(img_path=...)``).
        pipeline (Sequence): transforms.
        path_column / value_column (str): table columns of the image path and the number.
        image_column (str, optional): Parquet column of encoded image bytes; replaces the path column.
        label_map (dict, optional): string label -> number, applied before numeric parsing (e.g. age-group strings).
        allow_conflicting_duplicates (bool): accept an image listed twice with different values (each listing stays
            a sample); by default that is an error naming both lines, since one of them is wrong.
        max_line_bytes (int): the longest line a text annotation file may hold (``MAX_LINE_BYTES``).
        value_offset (float): added to every parsed value (``-1`` for 1-based grade files).
        drop_unlabelled (bool): drop rows whose value cannot be parsed (counted in ``num_dropped`` and logged)
            instead of raising.
        skip_unreadable (bool): when an image cannot be decoded, use the next readable sample (deterministically,
            counted in ``num_unreadable``) instead of raising; images found by ``check_images`` are left out.
        check_images (bool | 'auto'): read and decode every image when the data set is built and list the missing
            or unreadable ones (a ValueError naming them, or, with ``skip_unreadable``, a warning and those samples
            left out, listed in ``unreadable_images``). 'auto': only for data sets of at most
            ``CHECK_IMAGES_AUTO_LIMIT`` samples. ``tools/check_dataset.py`` runs the same check for any size.
        num_shots (int, optional): few-shot protocol, keep ``num_shots`` samples per raw value.
        label_shift (dict, optional): ``dict(num_topk=..., ratio=...)``, label-distribution-shift protocol.
        seed (int): seed of the few-shot / label-shift draws.
        **kwargs: mmpretrain/mmengine ``BaseDataset`` arguments (``test_mode``, ``lazy_init``, ``indices``, ...).
    """

    def __init__(self,
                 ann_file: Union[str, Sequence[str]] = '',
                 task: TaskLike = 'age',
                 data_root: str = '',
                 data_prefix: Union[str, dict] = '',
                 pipeline: Sequence = (),
                 path_column: str = 'path',
                 value_column: str = 'value',
                 image_column: Optional[str] = None,
                 label_map: Optional[Dict[str, float]] = None,
                 value_offset: float = 0.0,
                 allow_conflicting_duplicates: bool = False,
                 max_line_bytes: int = MAX_LINE_BYTES,
                 drop_unlabelled: bool = False,
                 skip_unreadable: bool = False,
                 check_images: Union[bool, str] = 'auto',
                 num_shots: Optional[int] = None,
                 label_shift: Optional[dict] = None,
                 seed: int = 0,
                 metainfo: Optional[dict] = None,
                 **kwargs):
        self.task = get_task(task)
        self.path_column = path_column
        self.value_column = value_column
        self.image_column = image_column
        self.label_map = None if label_map is None else {str(k): float(v) for k, v in label_map.items()}
        self.value_offset = float(value_offset)
        self.allow_conflicting_duplicates = allow_conflicting_duplicates
        self.max_line_bytes = int(max_line_bytes)
        self.drop_unlabelled = drop_unlabelled
        self.skip_unreadable = skip_unreadable
        if check_images not in (True, False, 'auto'):
            raise ValueError(f"check_images must be True, False or 'auto', got {check_images!r}")
        self.check_images = check_images
        self.unreadable_images: List[str] = []
        if num_shots is not None and int(num_shots) < 1:
            raise ValueError(f'num_shots must be >= 1, got {num_shots}')
        self.num_shots = num_shots
        if label_shift is not None and not {'num_topk', 'ratio'} <= set(label_shift):
            raise ValueError(f'label_shift needs keys num_topk and ratio, got {label_shift}')
        self.label_shift = label_shift
        self.seed = seed
        self.num_dropped = 0
        self._unreadable = set()
        metainfo = {'classes': self.task.concepts, **(metainfo or {})}
        if not isinstance(ann_file, str):
            ann_file = [osp.expanduser(f) for f in ann_file]
        super().__init__(ann_file=ann_file, data_root=data_root, data_prefix=data_prefix, pipeline=pipeline,
                         metainfo=metainfo, **kwargs)

    # ------------------------------------------------------------------ paths
    def _join_prefix(self):
        """As mmengine, but ``ann_file`` may be a list of files."""
        files = [self.ann_file] if isinstance(self.ann_file, str) else list(self.ann_file)
        files = [join_path(self.data_root, f) if f and self.data_root and not is_abs(f) else f for f in files]
        joined = files[0] if isinstance(self.ann_file, str) else files
        self.ann_file = ''  # let mmengine join the image prefix only
        super()._join_prefix()
        self.ann_file = joined

    @property
    def ann_files(self) -> List[str]:
        return [self.ann_file] if isinstance(self.ann_file, str) else list(self.ann_file)

    # ------------------------------------------------------------------ reading
    def read_table(self, ann_file: str) -> pd.DataFrame:
        """Raw rows of one annotation file with a ``_row`` column (line or row number used in error messages).

        Subclasses with another file layout override this; the returned frame must hold ``path_column`` (or
        ``image_column``) and ``value_column``. ``frame.attrs['row_kind']`` says how ``_row`` counts: 'line'
        (physical line, the default) or 'row' (0-based row index, for Parquet).
        """
        if not mmengine.fileio.exists(ann_file):
            raise FileNotFoundError(f'annotation file {ann_file} does not exist')
        suffix = osp.splitext(ann_file)[1].lower()
        if suffix in ('.parquet', '.pq'):
            content = mmengine.fileio.get(ann_file)
            try:
                frame = pd.read_parquet(io.BytesIO(content))
            except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... on truncated or non-Parquet files
                raise ValueError(f'{ann_file}: cannot read the Parquet annotation file '
                                 f'({len(content)} bytes; {type(err).__name__}: {err})') from None
            frame['_row'] = np.arange(len(frame))
            frame.attrs['row_kind'] = 'row'
            return frame
        content = read_text_bytes(ann_file, self.max_line_bytes)
        if suffix in ('.csv', '.tsv'):
            return read_csv_table(ann_file, content, sep='\t' if suffix == '.tsv' else ',')
        return self._read_list(ann_file, content)

    def _read_list(self, ann_file: str, content: bytes) -> pd.DataFrame:
        """``path value`` per line; the value is the last whitespace-separated token, so paths may hold spaces."""
        text = decode_text(ann_file, content)
        lines = pd.Series(text.splitlines(), dtype=object).str.strip()
        line_no = np.arange(len(lines)) + 1
        keep = (lines.str.len() > 0) & ~lines.str.startswith('#')
        lines, line_no = lines[keep], line_no[keep.to_numpy()]
        parts = lines.str.rsplit(n=1, expand=True)
        if len(lines) and (parts.shape[1] < 2 or parts[1].isna().any()):
            bad = 0 if parts.shape[1] < 2 else int(np.flatnonzero(parts[1].isna().to_numpy())[0])
            raise ValueError(f'{_position(ann_file, line_no[bad], "line")}: expected "path value", '
                             f'got {lines.iloc[bad]!r}')
        if not len(lines):
            parts = pd.DataFrame({0: [], 1: []}, dtype=object)
        return pd.DataFrame({self.path_column: parts[0].to_numpy(), self.value_column: parts[1].to_numpy(),
                             '_row': line_no})

    def parse_values(self, raw: pd.Series) -> np.ndarray:
        """Numbers of a value column; NaN where a value cannot be parsed. Subclasses may map other label forms."""
        if self.label_map is not None:
            text = raw.astype(str).str.strip()
            mapped = text.map(self.label_map)
            numeric = pd.to_numeric(text.where(mapped.isna()), errors='coerce')
            return mapped.fillna(numeric).to_numpy(dtype=np.float64)
        if pd.api.types.is_numeric_dtype(raw):
            return raw.to_numpy(dtype=np.float64)
        return pd.to_numeric(raw.astype(str).str.strip(), errors='coerce').to_numpy(dtype=np.float64)

    def _read_annotation_rows(self, ann_file: str) -> pd.DataFrame:
        frame = self.read_table(ann_file)
        source_col = self.image_column or self.path_column
        missing = [c for c in (source_col, self.value_column) if c not in frame.columns]
        if missing:
            cols = [c for c in frame.columns if c != '_row']
            raise ValueError(f'{ann_file}: missing column(s) {missing}; the file has {cols}')
        kind = frame.attrs.get('row_kind', 'line')
        values = self.parse_values(frame[self.value_column]) + self.value_offset
        bad = ~np.isfinite(values)
        if bad.any():
            if not self.drop_unlabelled:
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f'{_position(ann_file, frame["_row"].iat[i], kind)}: cannot parse value '
                                 f'{frame[self.value_column].iat[i]!r} (column {self.value_column!r})')
            self.num_dropped += int(bad.sum())
            print_log(f'{ann_file}: dropped {int(bad.sum())} rows with unparsable values, e.g. '
                      f'{frame[self.value_column][bad].head(3).tolist()}', logger='current', level=logging.WARNING)
            frame, values = frame[~bad], values[~bad]
        out = ~self.task.in_range(values)
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise ValueError(f'{_position(ann_file, frame["_row"].iat[i], kind)}: value {values[i]:g} lies outside '
                             f'the bins of task {self.task.name!r} '
                             f'[{self.task.edges[0]:g}, {self.task.upper if self.task.upper is not None else "inf"}]')
        result = pd.DataFrame({'_source': frame[source_col].to_numpy(), 'gt_value': values,
                               '_file': ann_file, '_row': frame['_row'].to_numpy(), '_kind': kind})
        empty = result['_source'].isna().to_numpy()
        if self.image_column is None:
            empty |= result['_source'].astype(str).str.len().to_numpy() == 0
        if self.image_column is None and empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise ValueError(f'{_position(ann_file, frame["_row"].iat[i], kind)}: empty image path')
        return result

    def load_data_list(self) -> List[dict]:
        if not any(self.ann_files):
            raise ValueError(f'{type(self).__name__} needs an ann_file')
        frames = [self._read_annotation_rows(f) for f in self.ann_files]
        table = pd.concat(frames, ignore_index=True)
        if not len(table):
            raise ValueError(f'no annotation rows in {self.ann_files}: the file(s) hold at most a header')
        if self.image_column is None and not self.allow_conflicting_duplicates:
            self._refuse_conflicting_duplicates(table)
        values = table['gt_value'].to_numpy(dtype=np.float64)
        keep = np.arange(len(values))
        if self.label_shift is not None:
            keep = keep[label_shift_indices(values[keep], self.label_shift['num_topk'], self.label_shift['ratio'],
                                            seed=self.seed)]
        if self.num_shots is not None:
            keep = keep[few_shot_indices(values[keep], int(self.num_shots), seed=self.seed)]
        values = values[keep]
        labels = self.task.value_to_bin(values)
        sources = table['_source'].to_numpy()[keep]
        if self.image_column is not None:
            data_list = [dict(img_bytes=s, gt_value=float(v), gt_label=int(lb))
                         for s, v, lb in zip(sources, values.tolist(), labels.tolist())]
        else:
            prefix = self.data_prefix.get('img_path', '')
            paths = [join_path(prefix, p) for p in sources] if prefix else [str(p) for p in sources]
            data_list = [dict(img_path=p, gt_value=float(v), gt_label=int(lb))
                         for p, v, lb in zip(paths, values.tolist(), labels.tolist())]
        if self.check_images is True or (self.check_images == 'auto' and len(data_list) <= CHECK_IMAGES_AUTO_LIMIT):
            data_list = self._drop_unreadable(data_list)
        return data_list

    @staticmethod
    def _refuse_conflicting_duplicates(table: pd.DataFrame) -> None:
        """One image listed with two different values: one of them is wrong, and training on both teaches noise.
        Paths are compared after normalisation (``a/./b.png`` is ``a/b.png``); identical repeats are kept."""
        key = table['_source'].astype(str).map(osp.normpath)
        spread = table.groupby(key, sort=False)['gt_value'].agg(['min', 'max', 'size'])
        bad = spread.index[(spread['size'] > 1) & (spread['max'] != spread['min'])]
        if not len(bad):
            return
        rows = table[key == bad[0]]
        listed = ', '.join(f'{v:g} ({_position(f, r, k)})' for v, f, r, k in
                           rows[['gt_value', '_file', '_row', '_kind']].head(4).itertuples(index=False))
        raise ValueError(f'{len(bad)} image(s) listed with conflicting values, e.g. {bad[0]!r}: {listed}; fix the '
                         f'annotations, or set allow_conflicting_duplicates=True to keep every listing')

    def _drop_unreadable(self, data_list: List[dict]) -> List[dict]:
        """The ``check_images`` pass: raise listing the bad images, or leave them out with ``skip_unreadable``."""
        loader = next((t for t in getattr(self.pipeline, 'transforms', []) if isinstance(t, LoadOrdinalImage)), None)
        max_pixels = DEFAULT_MAX_PIXELS if loader is None else loader.max_pixels
        backend = 'cv2' if loader is None else loader.imdecode_backend
        if len(data_list) > CHECK_IMAGES_AUTO_LIMIT:
            print_log(f'checking the {len(data_list)} images of {self.ann_files}', logger='current')
        bad = find_unreadable_images(data_list, max_pixels, backend, progress=log_progress(
            lambda msg: print_log(msg, logger='current')) if len(data_list) > CHECK_IMAGES_AUTO_LIMIT else None)
        if not bad:
            return data_list
        self.unreadable_images = [reason for _, reason in bad]
        listing = '\n  '.join(self.unreadable_images[:20])
        more = f'\n  ... and {len(bad) - 20} more' if len(bad) > 20 else ''
        summary = (f'{len(bad)} of {len(data_list)} images of {self.ann_files} are missing or unreadable:'
                   f'\n  {listing}{more}')
        if not self.skip_unreadable:
            raise UnreadableImageError(f'{summary}\nFix them, set skip_unreadable=True to leave them out, or '
                                       f'check_images=False to find them only when they are loaded.')
        print_log(f'{summary}\nleft out (skip_unreadable=True)', logger='current', level=logging.WARNING)
        dropped = {i for i, _ in bad}
        return [info for i, info in enumerate(data_list) if i not in dropped]

    # ------------------------------------------------------------------ access
    def get_gt_values(self) -> np.ndarray:
        """The numbers of all samples (cheap: no image is read)."""
        return np.array([self.get_data_info(i)['gt_value'] for i in range(len(self))], dtype=np.float64)

    @property
    def num_unreadable(self) -> int:
        """Samples skipped so far because their image could not be read (per process / dataloader worker)."""
        return len(self._unreadable)

    def prepare_data(self, idx: int):
        """Run the pipeline; with ``skip_unreadable`` an unreadable sample is replaced by the next readable one.

        The replacement is deterministic (idx+1, idx+2, ... wrapping around), unlike mmengine's random refetch,
        so that evaluation over a data set with broken files is reproducible. In test mode the replacement keeps the
        evaluation size but counts a neighbour twice: check ``num_unreadable`` (and the warnings) after testing.
        """
        if not self.skip_unreadable:
            return super().prepare_data(idx)
        n = len(self)
        for step in range(n):
            j = (idx + step) % n
            if j in self._unreadable:
                continue
            try:
                return super().prepare_data(j)
            except UnreadableImageError as err:
                self._unreadable.add(j)
                print_log(f'skipping unreadable sample {j} ({err}); {self.num_unreadable} skipped so far',
                          logger='current', level=logging.WARNING)
        raise UnreadableImageError(f'no readable image in the {n} samples of {self.ann_files}')

    def extra_repr(self) -> List[str]:
        body = super().extra_repr()
        body.append(f'Task: {self.task.name} ({self.task.num_bins} bins)')
        if self.unreadable_images:
            body.append(f'Unreadable images left out: {len(self.unreadable_images)}')
        if self.num_shots is not None:
            body.append(f'Shots per value: {self.num_shots}')
        if self.label_shift is not None:
            body.append(f'Label shift: {self.label_shift}')
        return body
