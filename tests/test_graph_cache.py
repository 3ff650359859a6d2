"""The scorer's graph cache (numclip_mm.batch.graph_cache): where it is, what its key depends on, round trips,
damaged entries, eviction. The cache inside real jobs: test_batch_scorer (test_graph_cache_*)."""
import os
import sys

from numclip_mm.batch import graph_cache
from numclip_mm.batch.graph_cache import GraphCache, cache_root, code_digest


def test_where_the_cache_is(monkeypatch, tmp_path):
    monkeypatch.delenv(graph_cache.ENV, raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert cache_root('auto') == str(tmp_path / 'xdg' / 'numclip_mm' / 'graphs')
    monkeypatch.delenv('XDG_CACHE_HOME')
    assert cache_root() == os.path.join(os.path.expanduser('~'), '.cache', 'numclip_mm', 'graphs')
    monkeypatch.setenv(graph_cache.ENV, str(tmp_path / 'env'))
    assert cache_root('auto') == str(tmp_path / 'env')
    assert cache_root(str(tmp_path / 'flag')) == str(tmp_path / 'flag')  # the flag wins over the environment
    for off in ('off', 'OFF', 'none', '0'):
        assert cache_root(off) is None
        monkeypatch.setenv(graph_cache.ENV, off)
        assert cache_root('auto') is None


def test_round_trip_damage_and_eviction(tmp_path):
    cache = GraphCache(str(tmp_path), limit_bytes=2500)
    assert cache.get('a' * 40) is None
    cache.put('a' * 40, b'x' * 1000)
    assert cache.get('a' * 40) == b'x' * 1000
    os.utime(tmp_path / ('a' * 40 + '.pt'), (1, 1))  # long unused
    cache.put('b' * 40, b'y' * 1000)
    cache.put('c' * 40, b'z' * 1000)  # 3000 bytes > 2500: the least recently used goes
    assert sorted(p.name[:1] for p in tmp_path.glob('*.pt')) == ['b', 'c']
    assert not list(tmp_path.glob('.tmp-*'))
    big = GraphCache(str(tmp_path), limit_bytes=10)
    big.put('d' * 40, b'w' * 100)  # over the limit alone: the newest is kept, the others go
    assert [p.name[:1] for p in tmp_path.glob('*.pt')] == ['d']
    (tmp_path / ('d' * 40 + '.pt')).write_bytes(b'w' * 99 + b'v')  # damaged: same size, other bytes
    assert big.get('d' * 40) is None and not list(tmp_path.glob('*.pt'))  # removed: the next job traces again


def test_an_unwritable_folder_never_fails_the_job(tmp_path, caplog):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    cache = GraphCache(str(blocker / 'graphs'))
    cache.put('a' * 40, b'x')  # warns, does not raise
    cache.put('b' * 40, b'y')
    assert cache.get('a' * 40) is None
    assert caplog.text.count('graph cache: cannot write') == 1


def test_the_key_follows_checkpoint_config_and_code(tmp_path, monkeypatch):
    """Checkpoint bytes, config and the source of a config's own module each change the key; a module that cannot
    be found makes the model uncacheable (None) rather than keyed without its code."""
    key = GraphCache.key('cfg', 'ckpt')
    assert len(key) == 40 and key == GraphCache.key('cfg', 'ckpt')
    assert GraphCache.key('cfg2', 'ckpt') != key != GraphCache.key('cfg', 'ckpt2')
    (tmp_path / 'my_parts.py').write_text('SCALE = 1\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with_module = GraphCache.key('cfg', 'ckpt', ['my_parts'])
    assert with_module != key
    assert GraphCache.key('cfg', 'ckpt', ['numclip_mm.register']) == key  # numclip_mm's source is in every key
    (tmp_path / 'my_parts.py').write_text('SCALE = 2\n')
    code_digest.cache_clear()  # (computed once per process)
    assert GraphCache.key('cfg', 'ckpt', ['my_parts']) != with_module
    assert GraphCache.key('cfg', 'ckpt', ['no_such_module_anywhere']) is None
    assert 'my_parts' not in sys.modules  # found, hashed, never imported
