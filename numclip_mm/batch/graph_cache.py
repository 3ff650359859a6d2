"""The driver's traces kept between jobs, so that scoring again with the same model neither builds nor traces it.

A data team scores catalog after catalog with one trained model; each job's driver would otherwise import the whole
model stack (mmpretrain, open_clip, MMEngine's runner), build the model and trace it again: ~2.5 s for the demo
model on a 2-core machine, ~4.5 s for the ViT-B/16 NumCLIP, before the first prediction. A trace is keyed by
everything it depends on: the checkpoint's bytes (sha256, which the job computes anyway), the config, the source of
numclip_mm and of the config's own ``custom_imports`` modules, the versions of torch, MMEngine, mmcv, mmpretrain and
open_clip, and the archive format. A changed file of any of them is another key, so a stale trace is never used; an
entry whose bytes no longer match the digest recorded when it was written is deleted and traced again.

Where: ``$NUMCLIP_MM_GRAPH_CACHE`` (``off`` switches the cache off), else ``$XDG_CACHE_HOME/numclip_mm/graphs``
(``~/.cache/numclip_mm/graphs``); ``--graph-cache DIR|off`` per job. The least recently used traces go once the
folder holds more than :data:`DEFAULT_LIMIT_BYTES` (the newest is always kept). The cache never fails a job: a
folder that cannot be written is reported once and the job traces as without it.
"""
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import uuid
from typing import List, Optional, Sequence, Tuple

from ..shared import bytes_digest

logger = logging.getLogger('numclip_mm.batch')

ENV = 'NUMCLIP_MM_GRAPH_CACHE'
OFF = ('off', 'none', '0', '')
DEFAULT_LIMIT_BYTES = 4 * 2 ** 30   # ~12 ViT-B/16 traces (329 MiB each)
MODEL_PACKAGES = ('torch', 'mmengine', 'mmcv', 'mmcv-lite', 'mmpretrain', 'open_clip_torch')


def cache_root(option: Optional[str] = 'auto') -> Optional[str]:
    """The cache folder for ``--graph-cache`` (``'auto'``: ``$NUMCLIP_MM_GRAPH_CACHE``, else the user's cache
    folder), None when it is off."""
    value = os.environ.get(ENV, 'auto') if option in (None, 'auto') else option
    if value.strip().lower() in OFF:
        return None
    if value == 'auto':
        base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
        return os.path.join(base, 'numclip_mm', 'graphs')
    return os.path.abspath(os.path.expanduser(value))


@functools.lru_cache(maxsize=None)
def code_digest(custom_imports: Sequence[str] = ()) -> Optional[str]:
    """sha256 over the source that defines a traced model (numclip_mm's, the config's ``custom_imports`` modules')
    and the versions of the packages that build it; None when a custom module cannot be found (no caching)."""
    import numclip_mm
    from numclip_mm.prediction_graph import GRAPH_FORMAT
    h = hashlib.sha256(GRAPH_FORMAT.encode())
    for package in MODEL_PACKAGES:
        try:
            h.update(f'{package}=={importlib.metadata.version(package)};'.encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f'{package} absent;'.encode())
    files = _source_files(os.path.dirname(numclip_mm.__file__), 'numclip_mm')
    for name in custom_imports:
        if name == 'numclip_mm' or name.startswith('numclip_mm.'):
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin or not os.path.isfile(spec.origin):
            return None
        files += (_source_files(os.path.dirname(spec.origin), name) if spec.submodule_search_locations
                  else [(name, spec.origin)])
    for name, path in files:  # (named relative to their package: the same code in another checkout, the same key)
        with open(path, 'rb') as f:
            h.update(name.encode() + b'\0' + hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def _source_files(folder: str, package: str) -> List[Tuple[str, str]]:
    """(name relative to the package, path) of every .py file under ``folder``."""
    return sorted((os.path.join(package, os.path.relpath(os.path.join(root, n), folder)), os.path.join(root, n))
                  for root, _, names in os.walk(folder) for n in names if n.endswith('.py'))


class GraphCache:
    """Trace archives in ``root``: ``<key>.pt`` and ``<key>.json`` (the archive's sha256 and size)."""

    def __init__(self, root: str, limit_bytes: int = DEFAULT_LIMIT_BYTES):
        self.root, self.limit_bytes = root, limit_bytes
        self._warned = False

    @staticmethod
    def key(config_digest: str, checkpoint_sha256: str, custom_imports: Sequence[str] = ()) -> Optional[str]:
        """The key of a model's trace (None: not cacheable, a custom module of the config cannot be found)."""
        code = code_digest(tuple(custom_imports))
        if code is None:
            return None
        return hashlib.sha256(f'{config_digest}:{checkpoint_sha256}:{code}'.encode()).hexdigest()[:40]

    def get(self, key: str) -> Optional[bytes]:
        path = os.path.join(self.root, key)
        try:
            with open(path + '.json') as f:
                record = json.load(f)
            with open(path + '.pt', 'rb') as f:
                archive = f.read()
        except (OSError, ValueError):
            return None
        if len(archive) != record.get('bytes') or bytes_digest(archive) != record.get('sha256'):
            logger.warning('graph cache: %s.pt does not match its record (damaged?): removed, tracing again', path)
            self._remove(key)
            return None
        try:
            os.utime(path + '.pt')  # recently used: evicted last
        except OSError:
            pass
        return archive

    def put(self, key: str, archive: bytes) -> None:
        """Store a trace (atomically: a concurrent job sees the whole entry or none); then trim the folder."""
        path = os.path.join(self.root, key)
        try:
            os.makedirs(self.root, exist_ok=True)
            self._write(path + '.pt', archive)
            self._write(path + '.json', json.dumps(dict(sha256=bytes_digest(archive), bytes=len(archive))).encode())
            self._trim(keep=key)
        except OSError as err:
            if not self._warned:
                logger.warning('graph cache: cannot write to %s (%s); the next job traces the model again',
                               self.root, err)
                self._warned = True

    def _write(self, path: str, data: bytes) -> None:
        tmp = os.path.join(self.root, f'.tmp-{uuid.uuid4().hex}')
        try:
            with open(tmp, 'wb') as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _trim(self, keep: str) -> None:
        entries = []
        for name in os.listdir(self.root):
            if name.endswith('.pt'):
                st = os.stat(os.path.join(self.root, name))
                entries.append((st.st_mtime, st.st_size, name[:-3]))
        total = sum(size for _, size, _ in entries)
        for _, size, key in sorted(entries):
            if total <= self.limit_bytes:
                break
            if key != keep:
                self._remove(key)
                total -= size

    def _remove(self, key: str) -> None:
        for suffix in ('.json', '.pt'):
            try:
                os.unlink(os.path.join(self.root, key + suffix))
            except OSError:
                pass
