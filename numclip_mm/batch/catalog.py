"""The only module that touches files and URIs: input resolution, the job's plan (footers read once), row-group
reads, image reads, identity checks, and the atomic write of an output file.

Local paths and fsspec URIs (``s3://``, ``gs://``, ``file://``, ``memory://`` ...) go through the same functions.

Commit (why a killed job never leaves a file that looks finished):

- local: written to ``<out>/.numclip-tmp-<random>-<name>`` and moved over ``<out>/<name>`` with ``os.replace``
  (atomic on POSIX); the next run removes leftover temporaries.
- object stores (``s3``, ``gs``, ``abfs`` ...): there is no rename. The output is uploaded to its final key with
  the upload left open (``autocommit=False``): parts are sent as they are written, and the object only appears when
  the upload is committed (S3: ``CompleteMultipartUpload``, or a single ``PutObject`` for small files) after the
  last byte was written. A failure aborts the upload; a killed worker leaves an unfinished multipart upload that
  never becomes an object (a bucket lifecycle rule ``AbortIncompleteMultipartUpload`` reclaims its parts).
- any other filesystem: temporary name, then ``fs.mv``.

And whatever the filesystem: an output only counts as complete when its Parquet footer (written last) is readable
and its ``numclip.scoring`` metadata matches the input's identity, row count and the model (see
:func:`output_status`), so even a torn file is re-scored, never trusted.
"""
import base64
import contextlib
import functools
import glob as globlib
import http.client
import json
import os
import posixpath
import shutil
import socket
import stat
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import unquote, urlsplit, urlunsplit

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.exceptions import FSTimeoutError
from fsspec.implementations.local import LocalFileSystem

from .columns import BYTES, PATH, STRUCT, image_kind, is_nested
from .errortext import shown_cell

PARQUET_SUFFIXES = ('.parquet', '.parq', '.pq')
TMP_PREFIX = '.numclip-tmp-'        # partial local outputs: written under this name, renamed when complete
METADATA_KEY = b'numclip.scoring'   # Parquet key-value metadata of an output: what it was computed from
OBJECT_STORES = ('s3', 's3a', 'gs', 'gcs', 'abfs', 'az', 'abfss')  # no rename: commit by completing the upload


class ScoringSetupError(ValueError):
    """A problem with the job's arguments or files, found before any work starts."""


@dataclass
class FilePlan:
    """One input file and the output file it becomes."""
    input: str                          # local absolute path or URI (with protocol)
    output: str                         # local absolute path or URI
    num_rows: int                       # from the input's Parquet footer
    row_group_rows: List[int]           # rows per row group (the unit of a read/decode task)
    identity: Dict[str, Any]            # size + mtime (local) or ETag (object stores) of the input
    status: str = 'todo'                # 'todo', 'complete' (skipped) or 'stale: <why>' (re-scored)
    schema: Optional[pa.Schema] = field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        return self.status == 'complete'


# ----------------------------------------------------------------------------------------------------------------
# filesystems and names

def is_local(fs) -> bool:
    return isinstance(fs, LocalFileSystem)


def url_to_fs(path: str) -> Tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path for that filesystem). Local paths become absolute."""
    fs, stripped = fsspec.core.url_to_fs(path)
    if is_local(fs):
        stripped = os.path.abspath(os.path.expanduser(path if '://' not in path else stripped))
    return fs, stripped


def full_name(fs, path: str) -> str:
    """A path as the user would write it again: local stays a path, others get their protocol back."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def _is_hidden(path: str) -> bool:
    """Hidden (``.name``) and bookkeeping (``_SUCCESS``, ``_committed_*``, ``_temporary/``, ``_metadata``) names,
    and Hadoop's ``.crc`` checksums: never data, never reported."""
    name = posixpath.basename(path.rstrip('/'))
    return name.startswith(('.', '_')) or name.endswith('.crc')


def _protocol(fs) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


@dataclass
class InputListing:
    """What an input spec names: the Parquet files to score, each with its path relative to the spec's folder (the
    output's path under the output folder, so ``year=2020/part-0.parquet`` keeps its partition), and the files
    found but not scored (reported in the log and the summary, never dropped in silence)."""
    fs: Any
    files: List[str]
    relative: List[str]
    unscored: List[str] = field(default_factory=list)   # 'path (why)'
    ignored: int = 0                                     # hidden, _SUCCESS, _committed_*, .crc, the output folder


def _glob_base(path: str) -> str:
    """The folder part of a glob before its first wildcard: what matched files are made relative to."""
    parts = path.split('/')
    for i, part in enumerate(parts):
        if any(ch in part for ch in '*?['):
            return '/'.join(parts[:i]) or '/'
    return posixpath.dirname(path)


def _walk(fs, root: str, skip: Optional[str], listing: InputListing) -> List[str]:
    """Every Parquet file under ``root`` (recursively, hidden/bookkeeping names and the folder ``skip`` pruned);
    other files and links to folders go to ``listing.unscored``."""
    found = []
    if is_local(fs):
        for folder, dirs, names in os.walk(root):
            keep = []
            for d in sorted(dirs):
                full = os.path.join(folder, d)
                if _is_hidden(d) or (skip and os.path.realpath(full) == skip):
                    listing.ignored += 1
                elif os.path.islink(full):
                    listing.unscored.append(f'{full}/ (a link to a folder: not followed)')
                else:
                    keep.append(d)
            dirs[:] = keep
            for n in sorted(names):
                full = os.path.join(folder, n)
                if _is_hidden(n):
                    listing.ignored += 1
                elif not n.lower().endswith(PARQUET_SUFFIXES):
                    listing.unscored.append(f'{full} (not a {"/".join(PARQUET_SUFFIXES)} file)')
                elif not os.path.isfile(full):
                    listing.unscored.append(f'{full} (not a regular file)')
                else:
                    found.append(full)
        return found
    for f in sorted(fs.find(root)):
        rel = posixpath.relpath(f, root)
        if any(_is_hidden(part) for part in rel.split('/')):
            listing.ignored += 1
        elif skip and (f + '/').startswith(skip.rstrip('/') + '/'):
            listing.ignored += 1
        elif not f.lower().endswith(PARQUET_SUFFIXES):
            listing.unscored.append(f'{full_name(fs, f)} (not a {"/".join(PARQUET_SUFFIXES)} file)')
        else:
            found.append(f)
    return found


def list_inputs(spec: str, output: Optional[str] = None) -> InputListing:
    """The Parquet files named by ``spec``: a file; a folder, walked recursively (Hive partitions such as
    ``year=2020/`` keep their relative path; hidden, ``_``-prefixed and ``.crc`` names ignored; other files listed
    as not scored); or a glob (matched folders walked the same way; paths kept relative to the glob's folder).
    ``output``, when it lies inside the input folder, is never read as input. Raises ScoringSetupError when nothing
    matches."""
    fs, path = url_to_fs(spec)
    skip = None
    if output is not None:
        fs_out, out_path = url_to_fs(output)
        if _protocol(fs_out) == _protocol(fs):
            skip = os.path.realpath(out_path) if is_local(fs) else posixpath.normpath(out_path)
    listing = InputListing(fs, [], [])
    if any(ch in path for ch in '*?['):
        base = _glob_base(path)
        found = sorted(globlib.glob(path)) if is_local(fs) else sorted(fs.glob(path))
        for f in found:
            if _is_hidden(f):
                listing.ignored += 1
            elif fs.isdir(f):
                listing.files += _walk(fs, f, skip, listing)
            else:
                listing.files.append(f)
    elif fs.isdir(path):
        base = path
        listing.files = _walk(fs, path, skip, listing)
    elif fs.exists(path):
        base = posixpath.dirname(path)
        listing.files = [path]
    else:
        raise ScoringSetupError(f'input {spec!r} does not exist')
    if not listing.files:
        extra = f' ({len(listing.unscored)} other files: {listing.unscored[:3]})' if listing.unscored else ''
        raise ScoringSetupError(f'no input Parquet files matched {spec!r}{extra}')
    if is_local(fs):
        listing.files = [os.path.abspath(f) for f in listing.files]
        base = os.path.abspath(base)
    listing.relative = [posixpath.relpath(f, base) for f in listing.files]
    return listing


def resolve_inputs(spec: str) -> Tuple[fsspec.AbstractFileSystem, List[str]]:
    """(filesystem, the Parquet files named by ``spec``): see :func:`list_inputs`."""
    listing = list_inputs(spec)
    return listing.fs, listing.files


def read_footer(fs, path: str) -> pq.FileMetaData:
    """The Parquet footer (schema, row groups, key-value metadata); reads only the file's tail."""
    try:
        if is_local(fs):
            return pq.read_metadata(path)
        with fs.open(path, 'rb') as f:
            return pq.read_metadata(f)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001  (pyarrow raises ArrowInvalid & co for non-Parquet files)
        raise ScoringSetupError(f'cannot read the Parquet footer of {full_name(fs, path)}: {err}') from err


def file_identity(fs, path: str) -> Dict[str, Any]:
    """What a file is, for resume and change detection: size + mtime (ns) locally, size + ETag on object stores
    (mtime where the store has no ETag)."""
    if is_local(fs):
        st = os.stat(path)
        return dict(size=st.st_size, mtime_ns=st.st_mtime_ns)
    info = fs.info(path)
    etag = info.get('ETag') or info.get('etag') or info.get('md5Hash')
    if etag is not None:
        return dict(size=int(info.get('size') or 0), etag=str(etag).strip('"'))
    mtime = info.get('LastModified') or info.get('mtime') or info.get('last_modified') or info.get('updated')
    return dict(size=int(info.get('size') or 0), mtime=str(mtime))


def copy_to_local(uri: str, local: str, what: str = 'checkpoint') -> None:
    """Download ``uri`` (any fsspec URI) to the local path ``local``."""
    fs, p = url_to_fs(uri)
    try:
        fs.get_file(p, local)
    except FileNotFoundError:
        raise FileNotFoundError(f'{what} not found: {uri}') from None


@contextlib.contextmanager
def local_copy(uri: Optional[str], companions: Sequence[str] = ()) -> Iterator[Optional[str]]:
    """A local path for ``uri`` while the block runs: the path itself for a local file (``file://`` removed), else a
    download into a temporary folder, removed afterwards. ``companions`` are suffixes of files that live next to it
    (a checkpoint's calibration sidecar): downloaded beside the copy where they exist. None stays None."""
    if uri is None:
        yield None
        return
    fs, path = url_to_fs(uri)
    if is_local(fs):
        yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, posixpath.basename(path))
        copy_to_local(uri, local)
        for suffix in companions:
            if exists(uri + suffix):
                copy_to_local(uri + suffix, local + suffix, what=f'{suffix} file')
        yield local


def exists(uri: str) -> bool:
    """Whether a file exists at a local path or URI."""
    fs, p = url_to_fs(uri)
    return fs.isfile(p)


# ----------------------------------------------------------------------------------------------------------------
# the plan

def scoring_metadata(plan_input: str, identity: Dict[str, Any], num_rows: int, model: Dict[str, Any],
                     columns: Dict[str, str]) -> Dict[str, Any]:
    """What an output records about how it was computed (its ``numclip.scoring`` metadata)."""
    return dict(input=plan_input, input_identity=identity, rows=num_rows, model=model, columns=columns)


def output_status(fs, path: str, expected: Dict[str, Any]) -> str:
    """'complete' when ``path`` holds a finished output computed from exactly ``expected`` (see
    :func:`scoring_metadata`), 'todo' when there is none, else 'stale: <what differs>'."""
    try:
        if not fs.isfile(path):
            return 'todo'
        meta = read_footer(fs, path)
    except FileNotFoundError:
        return 'todo'
    except ScoringSetupError:
        return 'stale: unreadable footer'
    raw = (meta.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return 'stale: no scoring metadata'
    recorded = json.loads(raw)
    for key, what in (('rows', 'row count'), ('input_identity', 'input file (size/mtime/ETag)'),
                      ('model', 'model (config or checkpoint)'), ('columns', 'output columns')):
        if recorded.get(key) != expected[key]:
            if key == 'model':
                return 'stale: ' + _model_change(recorded.get(key), expected[key])
            return f'stale: {what} changed'
    if meta.num_rows != expected['rows']:
        return 'stale: row count'
    return 'complete'


@dataclass(frozen=True)
class ImageSource:
    """The column that holds each row's image and how (columns.BYTES, STRUCT or PATH), and why it was chosen."""
    column: str
    kind: str
    reason: str = ''

    @property
    def flag(self) -> str:
        return '--path-column' if self.kind == PATH else '--image-column'


# string columns taken for image paths/URIs without being named (when the catalog has no image bytes at all)
PATH_COLUMN_NAMES = ('path', 'image_path', 'img_path', 'file', 'filename', 'file_name', 'filepath', 'file_path',
                     'uri', 'url', 'image_url', 'image_uri')


def _refuse_nested(where: str, column: str, ctype: pa.DataType) -> ScoringSetupError:
    return ScoringSetupError(
        f'image column {column!r} of {where} is {ctype}: a nested or list column holds several values per row, '
        f'and the scorer takes one image per row (binary bytes, a Hugging Face Image() struct<bytes, path> or a '
        f'path/URI string); explode it into one row per image first, or name another column with --image-column')


def choose_image_source(schema: pa.Schema, where: str, image_column: Optional[str] = None,
                        path_column: Optional[str] = None) -> ImageSource:
    """The image column of a file with ``schema``: the one named (checked), else the only unambiguous one: a column
    called ``image``; else the only Hugging Face image struct; else the only binary column; else, in a catalog
    without image bytes, the only string column with a path-like name (:data:`PATH_COLUMN_NAMES`)."""
    if image_column is not None and path_column is not None:
        raise ScoringSetupError('use --image-column or --path-column, not both')
    named = image_column or path_column
    if named is not None:
        flag = '--image-column' if image_column else '--path-column'
        if named not in schema.names:
            kind = 'image' if image_column else 'path'
            raise ScoringSetupError(f'input {where} has no {kind} column {named!r} (columns: {schema.names}); pick '
                                    f'it with --{kind}-column')
        ctype = schema.field(named).type
        kind = image_kind(ctype)
        if image_column and kind == PATH:
            raise ScoringSetupError(f'image column {named!r} of {where} is {ctype}, expected binary (encoded image '
                                    f'bytes) or a Hugging Face image struct; for file paths use --path-column')
        if path_column and kind != PATH:
            if kind is None and is_nested(ctype):
                raise _refuse_nested(where, named, ctype)
            raise ScoringSetupError(f'path column {named!r} of {where} is {ctype}, expected string')
        if kind is None:
            if is_nested(ctype):
                raise _refuse_nested(where, named, ctype)
            raise ScoringSetupError(f'image column {named!r} of {where} is {ctype}, expected binary (encoded image '
                                    f'bytes), a Hugging Face image struct<bytes, path>, or a string path '
                                    f'(--path-column)')
        return ImageSource(named, kind, f'named by {flag}')
    kinds = {f.name: image_kind(f.type) for f in schema}
    if 'image' in kinds:
        ctype = schema.field('image').type
        if kinds['image'] in (BYTES, STRUCT):
            return ImageSource('image', kinds['image'], "the column named 'image'")
        if kinds['image'] == PATH:
            raise ScoringSetupError(f"column 'image' of {where} holds strings ({ctype}); if they are image paths or "
                                    f"URIs, say so with --path-column image")
        if is_nested(ctype):
            raise _refuse_nested(where, 'image', ctype)
    structs = [n for n, k in kinds.items() if k == STRUCT]
    binaries = [n for n, k in kinds.items() if k == BYTES]
    if len(structs) == 1:
        return ImageSource(structs[0], STRUCT, 'the only Hugging Face image column (struct<bytes, path>)')
    if not structs and len(binaries) == 1:
        return ImageSource(binaries[0], BYTES, 'the only binary column')
    paths = [n for n, k in kinds.items() if k == PATH and n.lower() in PATH_COLUMN_NAMES]
    if not structs and not binaries and len(paths) == 1:
        return ImageSource(paths[0], PATH, 'the only path-like string column (no image bytes in the catalog)')
    candidates = structs + binaries or paths
    if candidates:
        raise ScoringSetupError(f'input {where} has several possible image columns {candidates}: say which with '
                                f'--image-column (bytes or Hugging Face image struct) or --path-column (paths/URIs)')
    nested = [f'{f.name} ({f.type})' for f in schema if is_nested(f.type)]
    raise ScoringSetupError(f'input {where} has no image column (binary bytes, a Hugging Face image struct or a '
                            f'path-like string column; columns: {schema.names}'
                            + (f'; nested columns, which are not supported: {nested}' if nested else '')
                            + '); name it with --image-column or --path-column')


def _model_change(recorded: Any, expected: Dict[str, Any]) -> str:
    """What differs between the recorded and the expected models (prefix -> identity each), e.g.
    'models changed (added: age_)'; the classic message for one model whose config or checkpoint changed."""
    nested = all(isinstance(m, dict) and all(isinstance(v, dict) for v in m.values()) for m in (recorded, expected))
    if not nested or (len(expected) == 1 and set(recorded) == set(expected)):
        return 'model (config or checkpoint) changed'
    parts = {'added': [p for p in expected if p not in recorded],
             'removed': [p for p in recorded if p not in expected],
             'changed': [p for p in expected if p in recorded and recorded[p] != expected[p]]}
    return 'models changed (' + '; '.join(f'{what}: {", ".join(repr(p) for p in prefixes)}'
                                          for what, prefixes in parts.items() if prefixes) + ')'


def _check_schema(fs, path: str, schema: pa.Schema, source: ImageSource, new_columns: Sequence[str]) -> None:
    """Every file must hold the job's image column in the same layout, and none of the new columns."""
    where = full_name(fs, path)
    if source.column not in schema.names:
        raise ScoringSetupError(f'input {where} has no column {source.column!r} (the image column, '
                                f'{source.reason}; columns: {schema.names}); every file must have it')
    kind = image_kind(schema.field(source.column).type)
    if kind != source.kind:
        raise ScoringSetupError(f'column {source.column!r} of {where} is {schema.field(source.column).type}, '
                                f'but holds {source.kind} cells in the other files: one layout per job')
    clash = [c for c in new_columns if c in schema.names]
    if clash:
        raise ScoringSetupError(f'input {where} already has the output columns {clash}; '
                                f'choose another --prefix')


def _refuse_overwrite(fs_in, fs_out, files: Sequence[str], relative: Sequence[str], out_dir: str) -> None:
    """No output may be an input: by identity (real paths, same-file) locally, by normalised name elsewhere."""
    if is_local(fs_in) and is_local(fs_out):
        real_out = os.path.realpath(out_dir)
        inodes = {}
        for f in files:
            st = os.stat(f)
            inodes[(st.st_dev, st.st_ino)] = f
        for rel in relative:
            target = os.path.join(real_out, rel)
            if not os.path.exists(target):
                continue
            st = os.stat(target)  # follows links: a symlinked folder or file and a hard link all show the inode
            twin = inodes.get((st.st_dev, st.st_ino))
            if twin is not None:
                raise ScoringSetupError(
                    f'output {os.path.join(out_dir, rel)} is the input file {twin} (same file after resolving '
                    f'links): it would overwrite the input; choose an output folder other than the input folder')
    elif _protocol(fs_in) == _protocol(fs_out):
        inputs = {posixpath.normpath(f) for f in files}
        for rel in relative:
            target = posixpath.normpath(posixpath.join(out_dir, rel))
            if target in inputs:
                raise ScoringSetupError(f'output {full_name(fs_out, target)} would overwrite the input file '
                                        f'{full_name(fs_in, target)}; choose an output folder other than the input '
                                        f'folder')


def check_output_folder(output: str) -> None:
    """Refuse an output that is a file, or a local folder that cannot be written (:func:`check_writable`)."""
    fs, out_dir = url_to_fs(output)
    fs.invalidate_cache()  # fsspec caches listings per process: what is there now counts
    if fs.isfile(out_dir):
        raise ScoringSetupError(f'output {output!r} is a file; it must be a folder (one output file per input file)')
    check_writable(fs, out_dir, output)


def check_writable(fs, out_dir: str, output: str) -> None:
    """Refuse a local output folder that cannot be written before any work (not after every row was scored): a
    probe file is created and removed in it, or, when it does not exist yet, a probe folder in its nearest existing
    parent. Object stores are not probed (a write there would cost a request and leave an object on failure)."""
    if not is_local(fs):
        return
    folder = out_dir
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    try:
        if not os.path.isdir(folder):
            raise NotADirectoryError(f'{folder} is a file')
        if folder == out_dir:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=TMP_PREFIX + 'probe-'):
                pass
        else:
            os.rmdir(tempfile.mkdtemp(dir=folder, prefix=TMP_PREFIX + 'probe-'))
    except OSError as err:
        reason = err.strerror or str(err)
        raise ScoringSetupError(f'output {output!r} is not writable ({reason}: {folder}); nothing was scored') from None
    if shutil.disk_usage(folder).free == 0:
        raise ScoringSetupError(f'output {output!r}: no space left on the device of {folder}; nothing was scored')


@dataclass
class JobPlan:
    """What :func:`plan_job` decided: filesystems, the output folder, one FilePlan per input, the image column, and
    the files seen but not scored."""
    fs_in: Any
    fs_out: Any
    out_dir: str
    plans: List[FilePlan]
    source: ImageSource
    unscored: List[str]
    ignored: int


def plan_job(input_spec: str, output: str, *, image_column: Optional[str] = None,
             path_column: Optional[str] = None, new_columns: Dict[str, str], model: Dict[str, Any],
             overwrite: bool = False) -> JobPlan:
    """Resolve inputs, read each footer once, choose and check the image column, refuse outputs that would overwrite
    inputs, and decide which outputs are still to be written. The output folder itself (a file, not writable) is
    checked before, by :func:`check_output_folder` (``pipeline.preflight``)."""
    fs_out, out_dir = url_to_fs(output)
    fs_out.invalidate_cache()  # fsspec caches listings per process: outputs written by workers since must show
    listing = list_inputs(input_spec, output)
    fs_in, files = listing.fs, listing.files
    _refuse_overwrite(fs_in, fs_out, files, listing.relative, out_dir)
    plans, source = [], None
    for f, rel in zip(files, listing.relative):
        meta = read_footer(fs_in, f)
        schema = meta.schema.to_arrow_schema()
        if source is None:
            source = choose_image_source(schema, full_name(fs_in, f), image_column, path_column)
        _check_schema(fs_in, f, schema, source, list(new_columns.values()))
        out_path = posixpath.join(out_dir, rel)
        plan = FilePlan(full_name(fs_in, f), full_name(fs_out, out_path), meta.num_rows,
                        [meta.row_group(i).num_rows for i in range(meta.num_row_groups)],
                        file_identity(fs_in, f), schema=schema)
        if not overwrite:
            plan.status = output_status(fs_out, out_path, expected_metadata(plan, model, new_columns))
        plans.append(plan)
    return JobPlan(fs_in, fs_out, out_dir, plans, source, listing.unscored, listing.ignored)


def expected_metadata(plan: FilePlan, model: Dict[str, Any], columns: Dict[str, str]) -> Dict[str, Any]:
    return scoring_metadata(plan.input, plan.identity, plan.num_rows, model, columns)


def clean_stale_temporaries(fs, out_dir: str) -> List[str]:
    """Remove partial local outputs a killed run left behind. Returns their paths."""
    if not fs.isdir(out_dir):
        return []
    stale = [p for p in fs.find(out_dir) if posixpath.basename(p).startswith(TMP_PREFIX)]  # partition folders too
    for p in stale:
        fs.rm(p)
    return stale


# ----------------------------------------------------------------------------------------------------------------
# worker side: reads

def read_row_group_column(uri: str, row_group: int, column: str) -> pa.ChunkedArray:
    """One row group's image/path column (the only data pages a decode task reads)."""
    fs, path = url_to_fs(uri)
    if is_local(fs):
        return pq.ParquetFile(path).read_row_group(row_group, columns=[column]).column(0)
    with fs.open(path, 'rb') as f:
        return pq.ParquetFile(f).read_row_group(row_group, columns=[column]).column(0)


# Every read of a path cell is bounded in bytes, in time and in kind (docs/batch_scoring.md, "What is bounded").
DEFAULT_MAX_IMAGE_BYTES = 64 << 20   # --max-image-bytes: larger images get an error, read no further than this + 1
DEFAULT_READ_TIMEOUT_S = 30.0        # --read-timeout: one cell's whole read (connect, answer, body) at most this long
READ_SCHEMES = ('file', 'http', 'https', 's3', 's3a', 'gs', 'gcs', 'abfs', 'abfss', 'az')  # what a path cell may be
SYSTEM_TREES = ('/proc', '/sys', '/dev')  # their "files" are endless, blocking or secret: never an image
MAX_REDIRECTS = 5
HTTP_RETRIES = 1  # one more GET after a refused/reset connection or a 502/503/504, inside the same time limit


class ImageNotFound(OSError):
    """An image path/URI names nothing."""


class ImageUnreachable(OSError):
    """An image URI's server could not be reached in time, or answered with an error."""


class ImageRefused(OSError):
    """A path cell that names something the scorer does not read: not a regular file (a FIFO, a device, /proc),
    outside ``--path-root``, or a URI scheme not in :data:`READ_SCHEMES`."""


class ImageTooLarge(OSError):
    """An image larger than ``--max-image-bytes`` (said by its size or Content-Length, or found while reading)."""


_FILE_KINDS = ((stat.S_ISFIFO, 'a FIFO'), (stat.S_ISCHR, 'a character device'), (stat.S_ISBLK, 'a block device'),
               (stat.S_ISSOCK, 'a socket'), (stat.S_ISDIR, 'a directory'))


def _kind_of(mode: int) -> str:
    return next((name for check, name in _FILE_KINDS if check(mode)), 'not a regular file')


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip('/') + '/')


class _Redirects(urllib.request.HTTPRedirectHandler):
    """At most MAX_REDIRECTS, and only to http(s): a redirect to file:// or ftp:// is refused."""
    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme not in ('http', 'https'):
            raise urllib.error.HTTPError(newurl, code, 'redirect to a non-http(s) URL refused', headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class ImageReader:
    """Reads one path cell (a local path or a URI), bounded in bytes (never past ``max_bytes`` + 1), time (``timeout``
    seconds for the whole read of a URI) and kind (regular files and :data:`READ_SCHEMES` only).

    Args:
        path_root: relative paths are resolved against it; when given it is also a boundary: a local path
            (relative, absolute or ``file://``) that resolves outside it (``..``, symbolic links) is refused. A URI
            root (``s3://bucket/images``) takes relative cells, refusing ``..`` out of it.
        cwd: folder relative paths are resolved against without ``path_root`` (the driver's working directory).
        timeout: seconds for the whole read of a URI (connection, answer and body).
    """

    def __init__(self, path_root: Optional[str] = None, cwd: Optional[str] = None,
                 timeout: float = DEFAULT_READ_TIMEOUT_S):
        self.path_root, self.timeout = path_root, float(timeout)
        self.root_is_uri = bool(path_root) and '://' in path_root and not path_root.startswith('file://')
        local_root = None if not path_root or self.root_is_uri else path_root.removeprefix('file://')
        self.base = os.path.abspath(local_root or cwd or os.getcwd())
        self.real_root = os.path.realpath(local_root) if local_root else None
        self._filesystems: Dict[str, Any] = {}
        self._opener = None

    def __call__(self, cell: str, max_bytes: Optional[int] = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
        shown = shown_cell(cell)
        scheme = cell.split('://', 1)[0].lower() if '://' in cell else None
        if scheme is None and self.root_is_uri:
            cell, scheme = self._join_uri_root(cell, shown), self.path_root.split('://', 1)[0].lower()
        if scheme in (None, 'file'):
            return self._read_local(cell.removeprefix('file://') if scheme else cell, shown, max_bytes)
        if scheme not in READ_SCHEMES:
            raise ImageRefused(f'image URI scheme {scheme}:// is not read (allowed: local paths and '
                               f'{", ".join(s + "://" for s in READ_SCHEMES)}): {shown}')
        if scheme in ('http', 'https'):
            return self._read_http(cell, shown, max_bytes)
        return self._read_fsspec(scheme, cell, shown, max_bytes)

    def _join_uri_root(self, cell: str, shown: str) -> str:
        joined = posixpath.normpath(posixpath.join(self.path_root.split('://', 1)[1], cell.lstrip('/')))
        if not _inside(joined, posixpath.normpath(self.path_root.split('://', 1)[1])):
            raise ImageRefused(f'image path outside --path-root {shown_cell(self.path_root)}: {shown}')
        return self.path_root.split('://', 1)[0] + '://' + joined

    # -- local files: regular files only, never blocking, never past the limit --------------------------------
    def _read_local(self, path: str, shown: str, max_bytes: Optional[int]) -> bytes:
        path = os.path.join(self.base, os.path.expanduser(path))
        real = os.path.realpath(path)  # '..' and symbolic links resolved: what would really be opened
        if self.real_root is not None and not _inside(real, self.real_root):
            raise ImageRefused(f'image path outside --path-root {shown_cell(self.path_root)} (after resolving '
                               f'.. and links): {shown}')
        tree = next((t for t in SYSTEM_TREES if _inside(real, t)), None)
        if tree is not None:
            raise ImageRefused(f'image path is under {tree}, not an image file: {shown}')
        try:
            mode = os.stat(real).st_mode  # before open: opening a FIFO would block, a device could do anything
            if not stat.S_ISREG(mode):
                raise ImageRefused(f'image path is {_kind_of(mode)}, not a regular file: {shown}')
            # O_NONBLOCK: a FIFO swapped in after the stat cannot block the open; fstat then sees what was opened
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, 'O_CLOEXEC', 0))
        except ImageRefused:
            raise
        except (FileNotFoundError, NotADirectoryError):
            raise ImageNotFound(f'image file not found: {shown}') from None
        except PermissionError:
            raise ImageUnreachable(f'image not readable (permission denied): {shown}') from None
        except OSError as err:  # a name too long, a loop of links, I/O errors: the reason, never the whole cell
            raise ImageUnreachable(f'image path not readable ({err.strerror or type(err).__name__}): {shown}'
                                   ) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ImageRefused(f'image path is {_kind_of(st.st_mode)}, not a regular file: {shown}')
            if max_bytes is not None and st.st_size > max_bytes:
                raise ImageTooLarge(f'image too large: {st.st_size} bytes > {max_bytes} (--max-image-bytes): '
                                    f'{shown}')
            os.set_blocking(fd, True)
            limit = st.st_size + 1 if max_bytes is None else max_bytes + 1  # a file growing meanwhile: still bounded
            chunks, size = [], 0
            while size < limit:
                block = os.read(fd, min(limit - size, 1 << 22))
                if not block:
                    break
                chunks.append(block)
                size += len(block)
            return b''.join(chunks)
        except (ImageRefused, ImageTooLarge):
            raise
        except OSError as err:
            raise ImageUnreachable(f'image file read failed ({err.strerror or type(err).__name__}): {shown}'
                                   ) from None
        finally:
            os.close(fd)

    # -- http(s): one GET, a deadline for the whole read, the body never read past the limit ------------------
    def _read_http(self, url: str, shown: str, max_bytes: Optional[int]) -> bytes:
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            try:
                return self._get(url, shown, max_bytes, deadline)
            except _Transient as err:
                attempt += 1
                if attempt > HTTP_RETRIES or time.monotonic() + 0.5 >= deadline:
                    raise ImageUnreachable(str(err)) from None
                time.sleep(0.5)

    def _get(self, url: str, shown: str, max_bytes: Optional[int], deadline: float) -> bytes:
        if self._opener is None:
            self._opener = urllib.request.build_opener(_Redirects)
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit('@', 1)[-1]
        request = urllib.request.Request(urlunsplit(parts._replace(netloc=netloc)),
                                         headers={'User-Agent': 'numclip-score', 'Accept': 'image/*, */*'})
        if parts.username is not None:  # user:password@ becomes Basic auth, never sent on to a redirect target
            token = base64.b64encode(f'{unquote(parts.username)}:{unquote(parts.password or "")}'.encode()).decode()
            request.add_unredirected_header('Authorization', f'Basic {token}')
        timed_out = (f'image URI timed out: no complete answer within {self.timeout:g} s (--read-timeout): '
                     f'{shown}')
        try:
            response = self._opener.open(request, timeout=max(deadline - time.monotonic(), 0.01))
        except urllib.error.HTTPError as err:
            err.close()
            if 'infinite loop' in str(err.msg) or 'redirect' in str(err.msg):
                raise ImageUnreachable(f'image URI redirects in a loop or more than {MAX_REDIRECTS} times '
                                       f'(HTTP {err.code}): {shown}') from None
            if err.code in (404, 410):
                raise ImageNotFound(f'image not found (HTTP {err.code} {err.reason}): {shown}') from None
            if err.code in (502, 503, 504):
                raise _Transient(f'image URI unreachable (HTTP {err.code} {err.reason}): {shown}') from None
            raise ImageUnreachable(f'image URI refused (HTTP {err.code} {err.reason}): {shown}') from None
        except (TimeoutError, socket.timeout):
            raise ImageUnreachable(timed_out) from None
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise ImageUnreachable(timed_out) from None
            if isinstance(reason, (ConnectionRefusedError, ConnectionResetError)):
                raise _Transient(f'image URI unreachable ({type(reason).__name__}: no connection to its server): '
                                 f'{shown}') from None
            raise ImageUnreachable(f'image URI unreachable ({reason}): {shown}') from None
        except (OSError, http.client.HTTPException) as err:
            raise _Transient(f'image URI unreachable ({type(err).__name__}: {err}): {shown}') from None
        with response:
            length = response.headers.get('Content-Length')
            if max_bytes is not None and length and length.isdigit() and int(length) > max_bytes:
                raise ImageTooLarge(f'image too large: {length} bytes (Content-Length) > {max_bytes} '
                                    f'(--max-image-bytes): {shown}')
            sock = getattr(getattr(getattr(response, 'fp', None), 'raw', None), '_sock', None)
            limit = None if max_bytes is None else max_bytes + 1
            chunks, size = [], 0
            try:
                while limit is None or size < limit:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    if sock is not None:
                        sock.settimeout(left)  # each wait for the next bytes ends at the deadline
                    block = response.read1(1 << 20 if limit is None else min(1 << 20, limit - size))
                    if not block:
                        break
                    chunks.append(block)
                    size += len(block)
            except (TimeoutError, socket.timeout):
                raise ImageUnreachable(f'{timed_out} ({size} bytes received'
                                       f'{f" of {length}" if length else ""})') from None
            except (OSError, http.client.HTTPException) as err:
                raise ImageUnreachable(f'image URI read failed after {size} bytes ({type(err).__name__}: {err}): '
                                       f'{shown}') from None
        return b''.join(chunks)

    # -- other fsspec filesystems (s3, gs, az): one ranged read, bounded by the same deadline -----------------
    def _read_fsspec(self, scheme: str, uri: str, shown: str, max_bytes: Optional[int]) -> bytes:
        fs = self._filesystems.get(scheme)
        if fs is None:
            fs = self._filesystems[scheme] = fsspec.filesystem(scheme)
        end = None if max_bytes is None else max_bytes + 1
        try:
            if getattr(fs, 'async_impl', False):  # fsspec's sync() cancels the request at the timeout
                return fs.cat_file(uri, start=0, end=end, timeout=self.timeout)
            with fs.open(uri, 'rb') as f:
                return f.read() if end is None else f.read(end)
        except FileNotFoundError:
            raise ImageNotFound(f'image not found ({scheme} says it does not exist): {shown}') from None
        except IsADirectoryError:
            raise ImageNotFound(f'image URI is a directory: {shown}') from None
        except PermissionError:
            raise ImageUnreachable(f'image not readable (permission denied): {shown}') from None
        except FSTimeoutError:
            raise ImageUnreachable(f'image URI timed out: no complete answer within {self.timeout:g} s '
                                   f'(--read-timeout): {shown}') from None
        except Exception as err:  # noqa: BLE001  (botocore/gcsfs/... errors: the server, not the file)
            raise ImageUnreachable(f'image URI unreachable ({type(err).__name__}: {err}): {shown}') from None


class _Transient(Exception):
    """A refused/reset connection or a 502/503/504: worth one more GET while time is left."""


# ----------------------------------------------------------------------------------------------------------------
# worker side: the atomic write of one output file

def _read_batch_rows(meta: pq.FileMetaData, target_bytes: int = 64 << 20, cap: int = 4096) -> int:
    """Rows per read/write batch: about ``target_bytes`` of input, at most ``cap`` rows."""
    if meta.num_rows == 0:
        return cap
    total = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return int(max(1, min(cap, target_bytes // max(1, total // meta.num_rows))))


def _mostly_unique(t: pa.DataType) -> bool:
    """Binary values (encoded images, at any nesting depth) and lists of floats (embeddings) rarely repeat."""
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t) \
            or pa.types.is_fixed_size_binary(t):
        return True
    if pa.types.is_struct(t):
        return any(_mostly_unique(t.field(i).type) for i in range(t.num_fields))
    value_type = getattr(t, 'value_type', None) if pa.types.is_nested(t) else None
    return value_type is not None and (pa.types.is_floating(value_type) or _mostly_unique(value_type))


def dictionary_columns(schema: pa.Schema) -> List[str]:
    """Columns worth dictionary-encoding: all but those holding binary (a Hugging Face image struct too) or float
    lists (embeddings). Encoded images are unique, so a dictionary only costs the writer a hash of every byte before
    it falls back (a third of the write's CPU on a PNG catalog)."""
    return [f.name for f in schema if not _mostly_unique(f.type)]


INCOMPRESSIBLE = 0.95  # an input column whose codec saved less than 5 % is not compressed again in the output


def _leaf_paths(schema: pa.Schema) -> List[str]:
    """Parquet's leaf column paths of an Arrow schema ('image.bytes', 'emb.list.element'), as the writer names them."""
    buf = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), buf)
    parquet_schema = pq.read_metadata(pa.BufferReader(buf.getvalue())).schema
    return [parquet_schema.column(i).path for i in range(len(parquet_schema))]


def output_compression(meta: pq.FileMetaData, schema: pa.Schema, codec: str = 'snappy') -> Dict[str, str]:
    """The codec of each output column: none for input columns whose codec saved less than 5 % (encoded images:
    JPEG, PNG and WebP bytes are compressed already, and compressing them again cost 0.22-0.26 CPU s per 48 MB of
    JPEGs with snappy against 0.03 s without, for the same size), ``codec`` for every other column (an input column
    stored uncompressed says nothing about its data, so it gets ``codec`` too)."""
    saved: Dict[str, List[int]] = {}
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            if chunk.compression != 'UNCOMPRESSED':
                sizes = saved.setdefault(chunk.path_in_schema, [0, 0])
                sizes[0] += chunk.total_compressed_size
                sizes[1] += chunk.total_uncompressed_size
    return {path: 'NONE' if path in saved and saved[path][0] >= INCOMPRESSIBLE * saved[path][1] else codec
            for path in _leaf_paths(schema)}


class _Sink:
    """Where an output's bytes go until :meth:`commit` (see the module docstring for each filesystem)."""

    def __init__(self, fs, out_path: str):
        self.fs, self.out_path = fs, out_path
        if is_local(fs):
            self.mode = 'rename'
            self.tmp = posixpath.join(posixpath.dirname(out_path), f'{TMP_PREFIX}{uuid.uuid4().hex[:8]}-'
                                                                    f'{posixpath.basename(out_path)}')
            os.makedirs(posixpath.dirname(out_path), exist_ok=True)
            self.file = open(self.tmp, 'wb')
        elif _protocol(fs) in OBJECT_STORES:
            self.mode = 'upload'
            self.file = fs.open(out_path, 'wb', autocommit=False)
        else:
            self.mode = 'move'
            self.tmp = posixpath.join(posixpath.dirname(out_path), f'{TMP_PREFIX}{uuid.uuid4().hex[:8]}-'
                                                                    f'{posixpath.basename(out_path)}')
            fs.makedirs(posixpath.dirname(out_path), exist_ok=True)
            self.file = fs.open(self.tmp, 'wb')

    def commit(self) -> None:
        if self.mode == 'rename':
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.out_path)
        elif self.mode == 'upload':
            self.file.close()    # uploads the last part; nothing is visible yet
            self.file.commit()   # PutObject / CompleteMultipartUpload: the object appears whole
        else:
            self.file.close()
            self.fs.mv(self.tmp, self.out_path)

    def abort(self) -> None:
        """Leave nothing behind. Each step on its own: closing a full disk's file raises (ENOSPC while flushing),
        and the temporary must still go, or it keeps the disk full."""
        if self.mode == 'upload':
            with contextlib.suppress(Exception):
                self.file.discard()  # abort the multipart upload
            return
        with contextlib.suppress(Exception):  # the descriptor is closed even when the final flush fails
            self.file.close()
        with contextlib.suppress(Exception):  # never masks the error that aborted (the next run sweeps leftovers)
            if self.mode == 'rename':
                os.unlink(self.tmp)
            else:
                self.fs.rm(self.tmp)


def write_scored_file(plan: FilePlan, predictions: pa.Table, names: Dict[str, str], column: str,
                      metadata: Dict[str, Any], check_crcs, error_columns: Optional[Sequence[str]] = None) -> int:
    """Stream ``plan.input``, attach ``predictions`` (sorted by row, one per input row), write the output with its
    ``numclip.scoring`` metadata and commit it atomically. Runs on a Ray worker.

    ``names`` maps prediction columns to output columns. ``check_crcs(input_batch_column, prediction_slice)`` raises
    when the input changed while it was scored. Returns the number of rows with an error in any of
    ``error_columns`` (prediction columns; default: ``error``).
    """
    import pyarrow.compute as pc

    from .columns import ERROR
    error_columns = list(error_columns or [ERROR])
    types = {key: predictions.schema.field(key).type for key in names}
    fs_in, in_path = url_to_fs(plan.input)
    fs_out, out_path = url_to_fs(plan.output)
    if file_identity(fs_in, in_path) != plan.identity:
        raise RuntimeError(f'{plan.input} changed while it was scored (size/mtime/ETag); nothing was written for '
                           f'this file: run the job again')
    src_file = None if is_local(fs_in) else fs_in.open(in_path, 'rb')
    src = pq.ParquetFile(in_path if src_file is None else src_file)
    schema = src.schema_arrow
    for key, name in names.items():
        schema = schema.append(pa.field(name, types[key]))
    schema = schema.with_metadata({**(schema.metadata or {}), METADATA_KEY: json.dumps(metadata).encode()})
    sink = _Sink(fs_out, out_path)
    bad = seen = 0
    try:
        with pq.ParquetWriter(sink.file, schema, use_dictionary=dictionary_columns(schema),
                              compression=output_compression(src.metadata, schema)) as writer:
            for batch in src.iter_batches(batch_size=_read_batch_rows(src.metadata), use_threads=False):
                part = predictions.slice(seen, batch.num_rows)
                check_crcs(batch.column(column), part, seen)
                table = pa.Table.from_batches([batch])
                for key, name in names.items():
                    table = table.append_column(pa.field(name, types[key]), part.column(key))
                writer.write_table(table.cast(schema))
                failed = functools.reduce(pc.or_, [part.column(c).is_valid() for c in error_columns])
                bad += int(pc.sum(failed).as_py() or 0)
                seen += batch.num_rows
        if seen != plan.num_rows:
            raise RuntimeError(f'{plan.input}: read {seen} rows but its footer says {plan.num_rows}')
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    finally:
        if src_file is not None:
            src_file.close()
    return bad
