"""Everything about the files of a scoring job that can be decided before Ray starts.

Input resolution (one Parquet file, a folder, a glob; local paths or fsspec URIs), schema checks, the output
plan (one output file per input file, same base name) and the resume test (an output is complete when it exists,
has the input's row count in its Parquet footer and carries the prediction columns).
"""
import glob as globlib
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

PARQUET_SUFFIXES = ('.parquet', '.parq', '.pq')
TMP_PREFIX = '.numclip-tmp-'  # partial outputs: written under this name, renamed when complete


class ScoringSetupError(ValueError):
    """A problem with the job's arguments or files, found before any work starts."""


@dataclass
class FilePlan:
    """One input file and the output file it becomes."""
    input: str                 # path (local, absolute) or URI as given to the filesystem
    output: str                # output path or URI
    num_rows: int              # from the input's Parquet footer
    complete: bool = False     # a complete output already exists (skipped unless overwrite)
    schema: Optional[pa.Schema] = field(default=None, repr=False)


def is_local(fs) -> bool:
    return isinstance(fs, LocalFileSystem)


def url_to_fs(path: str) -> Tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path for that filesystem). Local paths become absolute."""
    fs, stripped = fsspec.core.url_to_fs(path)
    if is_local(fs):
        stripped = os.path.abspath(os.path.expanduser(path if '://' not in path else stripped))
    return fs, stripped


def _full(fs, path: str) -> str:
    """A path as the user would write it again: local stays a path, others get their protocol back."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def _is_hidden(path: str) -> bool:
    return posixpath.basename(path.rstrip('/')).startswith(('.', '_'))


def resolve_inputs(spec: str) -> Tuple[fsspec.AbstractFileSystem, List[str]]:
    """The Parquet files named by ``spec``: a file, a folder (its ``*.parquet`` files, not recursive, hidden and
    ``_``-prefixed names skipped) or a glob. Sorted by name. Raises ScoringSetupError when nothing matches."""
    fs, path = url_to_fs(spec)
    if any(ch in path for ch in '*?['):
        found = sorted(globlib.glob(path)) if is_local(fs) else sorted(fs.glob(path))
        files = [f for f in found if not _is_hidden(f) and fs.isfile(f)]
    elif fs.isdir(path):
        files = sorted(f for f in fs.ls(path, detail=False)
                       if f.lower().endswith(PARQUET_SUFFIXES) and not _is_hidden(f) and fs.isfile(f))
    elif fs.exists(path):
        files = [path]
    else:
        raise ScoringSetupError(f'input {spec!r} does not exist')
    if not files:
        raise ScoringSetupError(f'no input Parquet files matched {spec!r}')
    if is_local(fs):
        files = [os.path.abspath(f) for f in files]
    names = [posixpath.basename(f) for f in files]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ScoringSetupError(f'input files share base names {dupes[:5]}: outputs are named after the input '
                                f'file, so they would collide; score them as separate jobs')
    return fs, files


def read_metadata(fs, path: str) -> pq.FileMetaData:
    try:
        if is_local(fs):
            return pq.read_metadata(path)
        with fs.open(path, 'rb') as f:
            return pq.read_metadata(f)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001  (pyarrow raises ArrowInvalid & co for non-Parquet files)
        raise ScoringSetupError(f'cannot read the Parquet footer of {_full(fs, path)}: {err}') from err


def open_parquet(fs, path: str) -> pq.ParquetFile:
    return pq.ParquetFile(path if is_local(fs) else fs.open(path, 'rb'))


def output_is_complete(fs, path: str, num_rows: int, new_columns: Sequence[str]) -> bool:
    """True when ``path`` holds a finished output: readable footer, ``num_rows`` rows, the prediction columns."""
    try:
        if not fs.isfile(path):
            return False
        meta = read_metadata(fs, path)
    except (FileNotFoundError, ScoringSetupError):
        return False
    names = set(meta.schema.to_arrow_schema().names)
    return meta.num_rows == num_rows and all(c in names for c in new_columns)


def plan_job(input_spec: str, output: str, *, image_column: Optional[str], path_column: Optional[str],
             new_columns: Sequence[str], overwrite: bool = False
             ) -> Tuple[fsspec.AbstractFileSystem, fsspec.AbstractFileSystem, str, List[FilePlan]]:
    """Resolve inputs, check their schemas, and decide which outputs are still to be written.

    Returns (input filesystem, output filesystem, output folder, plans).
    """
    if (image_column is None) == (path_column is None):
        raise ScoringSetupError('use exactly one of an image column (encoded bytes) or a path column')
    column = image_column or path_column
    fs_in, files = resolve_inputs(input_spec)
    fs_out, out_dir = url_to_fs(output)
    if fs_out.isfile(out_dir):
        raise ScoringSetupError(f'output {output!r} is a file; it must be a folder (one output file per input file)')
    same_fs = type(fs_in) is type(fs_out) and fs_in.protocol == fs_out.protocol
    input_set = {posixpath.normpath(f) for f in files}

    plans = []
    for f in files:
        out_path = posixpath.join(out_dir, posixpath.basename(f))
        if same_fs and posixpath.normpath(out_path) in input_set:
            raise ScoringSetupError(
                f'output {_full(fs_out, out_path)} would overwrite the input file {_full(fs_in, f)}; '
                f'choose an output folder other than the input folder')
        meta = read_metadata(fs_in, f)
        schema = meta.schema.to_arrow_schema()
        if column not in schema.names:
            kind = 'image' if image_column else 'path'
            raise ScoringSetupError(
                f'input {_full(fs_in, f)} has no {kind} column {column!r} (columns: {schema.names}); '
                f'pick it with --{kind}-column')
        ctype = schema.field(column).type
        if image_column and not (pa.types.is_binary(ctype) or pa.types.is_large_binary(ctype)
                                 or pa.types.is_binary_view(ctype)):
            raise ScoringSetupError(f'image column {column!r} of {_full(fs_in, f)} is {ctype}, expected binary '
                                    f'(encoded image bytes); for file paths use --path-column')
        if path_column and not (pa.types.is_string(ctype) or pa.types.is_large_string(ctype)
                                or pa.types.is_string_view(ctype)):
            raise ScoringSetupError(f'path column {column!r} of {_full(fs_in, f)} is {ctype}, expected string')
        clash = [c for c in new_columns if c in schema.names]
        if clash:
            raise ScoringSetupError(f'input {_full(fs_in, f)} already has the output columns {clash}; '
                                    f'choose another --prefix')
        complete = (not overwrite) and output_is_complete(fs_out, out_path, meta.num_rows, new_columns)
        plans.append(FilePlan(_full(fs_in, f), _full(fs_out, out_path), meta.num_rows, complete, schema))
    return fs_in, fs_out, out_dir, plans


def clean_stale_temporaries(fs, out_dir: str) -> List[str]:
    """Remove partial outputs a killed run left behind. Returns their paths."""
    if not fs.isdir(out_dir):
        return []
    stale = [p for p in fs.ls(out_dir, detail=False) if posixpath.basename(p).startswith(TMP_PREFIX)]
    for p in stale:
        fs.rm(p)
    return stale


def temporary_name(fs, out_path: str) -> str:
    out_dir, name = posixpath.split(out_path)
    return posixpath.join(out_dir, f'{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{name}')


def commit(fs, tmp_path: str, out_path: str) -> None:
    """Move a finished temporary output to its final name (atomic on local filesystems)."""
    if is_local(fs):
        os.replace(tmp_path, out_path)
    else:
        fs.mv(tmp_path, out_path)


def strip(fs, path: str) -> str:
    return path if is_local(fs) else fs._strip_protocol(path)


def summary_counts(plans: Sequence[FilePlan]) -> Dict[str, int]:
    return dict(files=len(plans), complete=sum(p.complete for p in plans),
                rows=sum(p.num_rows for p in plans))
