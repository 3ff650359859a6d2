"""The Ray batch scorer (batch/) on local catalogs: outputs, bad rows, worker-side writes, resume by identity,
output safety, hostile rows (pixel bombs, odd sizes), faults (an actor dying mid-run), up-front errors.

One Ray instance (2 CPUs, loopback, no dashboard) is shared by the module and shut down at teardown; every test has
a SIGALRM timeout so that a hung pipeline fails instead of blocking the suite. The command line, `ray job submit`
and a killed driver are in test_batch_cli.py; object stores in test_batch_s3.py.
"""
import io
import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import Payload, dying_actor, free_port, raising_actor, write_tiny_config
from PIL import Image

from numclip_mm.batch import catalog
from numclip_mm.batch.pipeline import ScoreOptions, preflight, prepare, run, score_catalog
from numclip_mm.batch.score import main as cli_main
from numclip_mm.inference import Predictor
from numclip_mm.utils import CheckpointMismatchError

REPO = Path(__file__).resolve().parents[1]
TEST_TIMEOUT_S = 180  # per test (conftest's module_timeout): a hung Ray pipeline fails instead of hanging CI
MAX_BYTES = 20_000
NEW_COLUMNS = {'count_value': pa.float64(), 'count_label': pa.string(), 'count_probability': pa.float64(),
               'count_bin_argmax': pa.string(), 'count_bin_argmax_probability': pa.float64(),
               'count_error': pa.string()}


def _png(rng, h, w):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format='PNG')
    return buf.getvalue()


def _pixel_bomb(rng, width=20000, height=20000):
    """A small PNG whose header claims ``width`` x ``height`` pixels (IHDR patched, CRC recomputed)."""
    import struct
    import zlib
    data = bytearray(_png(rng, 8, 8))
    ihdr = data[12:29]  # b'IHDR' + 13 bytes
    ihdr[4:12] = struct.pack('>II', width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack('>I', zlib.crc32(bytes(ihdr)))
    return bytes(data)


def _flat_png(h, w, level=128):
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), level, dtype=np.uint8)).save(buf, format='PNG')
    return buf.getvalue()


# expected error substrings per kind of bad cell ('odd': another size than the model's input: a prediction)
BAD = {'corrupt': 'cannot decode', 'empty': 'empty image', 'null': 'null', 'big': 'too large', 'missing': 'not found',
       'bomb': '400000000 pixels exceeds the pixel limit max_pixels=64000000', 'unreachable': 'unreachable'}
GOOD = ('ok', 'odd')


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    """Config, checkpoint, a reference Predictor, an image-bytes catalog (2 files) and a path catalog (1 file).

    The config's test pipeline has no resize (like the demo's): images of any size must still reach the model at its
    32 px input size, and one odd image must not break its batch."""
    root = tmp_path_factory.mktemp('scorer')
    base_cfg = Path(write_tiny_config(root / 'tiny_base.py'))
    cfg = root / 'tiny.py'
    cfg.write_text(f"_base_ = [{str(base_cfg)!r}]\n"
                   "test_dataloader = dict(dataset=dict(\n"
                   "    pipeline=[dict(type='PackInputs', algorithm_keys=['gt_value'])]))\n")
    torch.manual_seed(1)
    reference = Predictor(str(cfg))
    ckpt = root / 'tiny.pth'
    torch.save({'state_dict': reference.model.state_dict(), 'meta': {}}, ckpt)
    bad_cfg = Path(write_tiny_config(root / 'adience.py', task='adience'))

    rng = np.random.default_rng(0)
    big = _png(rng, 120, 120)  # ~43 KB of noise > MAX_BYTES
    assert len(big) > MAX_BYTES
    cat = root / 'catalog'
    cat.mkdir()
    kinds = {}  # file name -> per-row kind ('ok' or a BAD key)
    layouts = {'part-000.parquet': ['ok', 'corrupt', 'ok', 'empty', 'ok', 'null', 'ok', 'big', 'odd', 'bomb', 'ok',
                                    'odd', 'ok'],
               'part-001.parquet': ['ok', 'ok', 'ok', 'corrupt', 'ok', 'ok', 'ok']}
    odd = iter([_flat_png(224, 224), _flat_png(1, 1, 7)])
    ids = 0
    for name, layout in layouts.items():
        cells = [{'ok': lambda: _png(rng, int(rng.integers(16, 48)), int(rng.integers(16, 48))),
                  'corrupt': lambda: b'\x89PNG this is not an image', 'empty': lambda: b'', 'null': lambda: None,
                  'big': lambda: big, 'odd': lambda: next(odd), 'bomb': lambda: _pixel_bomb(rng)}[k]()
                 for k in layout]
        n = len(layout)
        table = pa.table({'id': pa.array(range(ids, ids + n), pa.int64()),
                          'image': pa.array(cells, pa.binary()),
                          'note': pa.array([f'row {i}' for i in range(n)], pa.string()),
                          'weight': pa.array(rng.random(n), pa.float32()),
                          'blob': pa.array([rng.bytes(150_000) for _ in range(n)], pa.binary())})  # bulk
        pq.write_table(table, cat / name, row_group_size=4)
        kinds[name] = layout
        ids += n
    (cat / 'README.txt').write_text('not parquet, ignored by folder input')

    images = root / 'images'
    images.mkdir()
    for i in range(4):
        (images / f'img{i}.png').write_bytes(_png(rng, 20 + i, 30))
    (images / 'broken.png').write_bytes(b'nope')
    (images / 'big.png').write_bytes(big)
    path_layout = [(str(images / 'img0.png'), 'ok'), ('img1.png', 'ok'), (str(images / 'gone.png'), 'missing'),
                   (None, 'null'), (str(images / 'broken.png'), 'corrupt'), (str(images / 'img2.png'), 'ok'),
                   (str(images / 'big.png'), 'big'), ('file://' + str(images / 'img3.png'), 'ok'),
                   (f'http://127.0.0.1:{free_port()}/img.png', 'unreachable')]  # a free port: nothing listens
    pcat = root / 'paths'
    pcat.mkdir()
    pq.write_table(pa.table({'key': pa.array([f'k{i}' for i in range(len(path_layout))]),
                             'path': pa.array([p for p, _ in path_layout], pa.string())}), pcat / 'paths.parquet')
    return dict(root=root, cfg=str(cfg), ckpt=str(ckpt), bad_cfg=str(bad_cfg), reference=reference, cat=cat,
                kinds=kinds, images=images, pcat=pcat, path_kinds=[k for _, k in path_layout])


def _opts(env, **kw):
    """One inference actor unless a test says otherwise: on these few-row catalogs a second actor only adds its
    start-up (~5 CPU s of imports on a 2-core machine) to the test; ``scored`` and the actor-death test run the
    default sizing (one actor per CPU), as do the CLI tests."""
    base = dict(config=env['cfg'], checkpoint=env['ckpt'], batch_size=4, max_image_bytes=MAX_BYTES, num_actors=1)
    base.update(kw)
    return ScoreOptions(**base)


def _check_output(out_file, in_file, kinds, reference, cell_bytes):
    """Every input column kept, rows in order, new columns typed, errors on exactly the bad rows, predictions equal
    to Predictor.predict on the good rows."""
    src, out = pq.read_table(in_file), pq.read_table(out_file)
    assert out.num_rows == src.num_rows == len(kinds)
    assert out.schema.names == src.schema.names + list(NEW_COLUMNS)
    for name in src.schema.names:
        assert out.column(name).equals(src.column(name)), name
    for name, typ in NEW_COLUMNS.items():
        assert out.schema.field(name).type == typ, name
    err = out.column('count_error').to_pylist()
    value = out.column('count_value').to_pylist()
    label = out.column('count_label').to_pylist()
    prob = out.column('count_probability').to_pylist()
    good = [i for i, k in enumerate(kinds) if k in GOOD]
    for i, k in enumerate(kinds):
        if k in GOOD:
            assert err[i] is None and value[i] is not None and label[i] is not None and prob[i] is not None
        else:
            assert err[i] is not None and BAD[k] in err[i], (i, k, err[i])
            assert value[i] is None and label[i] is None and prob[i] is None
    expected = reference.predict([cell_bytes(i) for i in good])
    np.testing.assert_allclose([value[i] for i in good], expected['value'], atol=1e-5, rtol=0)
    np.testing.assert_allclose([prob[i] for i in good], expected['probability'], atol=1e-5, rtol=0)
    assert [label[i] for i in good] == list(expected['label'])
    top, top_prob = out.column('count_bin_argmax').to_pylist(), out.column('count_bin_argmax_probability').to_pylist()
    assert [top[i] for i in good] == list(expected['bin_argmax'])
    np.testing.assert_allclose([top_prob[i] for i in good], expected['bin_argmax_probability'], atol=1e-5, rtol=0)
    assert all(top[i] is None and top_prob[i] is None for i in range(len(kinds)) if i not in good)
    # the label is the bin of the written value on every row (by construction, not by luck of the arg-max)
    task = reference.task
    assert [label[i] for i in good] == [task.concepts[b] for b in task.value_to_bin([value[i] for i in good])]


# --------------------------------------------------------------------------------------------------------------
# end to end on Ray

def _driver_io():
    with open('/proc/self/io') as f:
        return {k: int(v) for k, v in (line.split(': ') for line in f)}


@pytest.fixture(scope='module')
def scored(env, ray_session, tmp_path_factory):
    """One pipeline run over the whole catalog folder, shared by the tests below. While it runs, every way pyarrow
    reads data pages is replaced in this (the driver's) process by a function that records the call and raises,
    so the run only succeeds if the driver reads footers and prediction columns only: the job runs as on a cluster,
    without the head start (the driver scoring items itself while the actors start, on a private instance only;
    test_head_start_* below)."""
    out = tmp_path_factory.mktemp('scored') / 'out'
    records, data_reads = [], []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger('numclip_mm.batch')
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)

    def forbidden(name):
        def read(*args, **kwargs):
            data_reads.append(name)
            raise AssertionError(f'the driver read input data pages ({name})')
        return read
    patches = [(pq.ParquetFile, n) for n in ('read', 'read_row_group', 'read_row_groups', 'iter_batches')]
    patches += [(pq, 'read_table'), (catalog, 'read_row_group_column'), (catalog, 'write_scored_file')]
    saved = [(obj, n, getattr(obj, n)) for obj, n in patches]
    before = _driver_io()
    try:
        for obj, n in patches:
            setattr(obj, n, forbidden(n))
        report = score_catalog(_opts(env, input=str(env['cat']), output=str(out), progress_interval_s=0,
                                     num_actors=None, head_start=False))
    finally:
        for obj, n, f in saved:
            setattr(obj, n, f)
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    after = _driver_io()
    return dict(out=out, report=report, lines=[r.getMessage() for r in records], data_reads=data_reads,
                io={k: after[k] - before[k] for k in after})


def test_folder_input_scores_every_row(env, scored):
    out, report = scored['out'], scored['report']
    assert sorted(p.name for p in out.iterdir()) == ['part-000.parquet', 'part-001.parquet']  # no temporaries
    assert report['files_written'] == 2 and report['files_skipped'] == 0 and report['rows_scored'] == 20
    assert [f['errors'] for f in report['files']] == [5, 1]
    for name, kinds in env['kinds'].items():
        images = pq.read_table(env['cat'] / name).column('image').to_pylist()
        _check_output(out / name, env['cat'] / name, kinds, env['reference'], images.__getitem__)


def test_outputs_are_written_by_workers_not_the_driver(env, scored):
    """The driver read footers and prediction columns only (the data-page readers above would have raised), and
    the bytes it read and wrote stay far below the catalog's (whose image bytes it never touched)."""
    assert scored['data_reads'] == []
    catalog_bytes = sum(p.stat().st_size for p in env['cat'].glob('*.parquet'))
    out_bytes = sum(p.stat().st_size for p in scored['out'].glob('*.parquet'))
    assert min(out_bytes, catalog_bytes) > 2_500_000  # the 'blob' column: megabytes a driver write would show
    assert scored['io']['wchar'] < out_bytes / 10, scored['io']  # the outputs were written elsewhere
    assert scored['report']['first_output_s'] < scored['report']['seconds']


def test_outputs_dictionary_encode_all_but_binary_columns(scored):
    """Unique encoded images are written plainly (no dictionary to hash them into); small columns keep one."""
    meta = pq.read_metadata(scored['out'] / 'part-000.parquet')
    chunks = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i)
              for i in range(meta.num_columns)}
    assert 'RLE_DICTIONARY' not in chunks['image'].encodings and 'RLE_DICTIONARY' not in chunks['blob'].encodings
    assert 'RLE_DICTIONARY' in chunks['count_label'].encodings and 'RLE_DICTIONARY' in chunks['note'].encodings


def test_progress_lines(scored):
    lines = scored['lines']
    progress = [line for line in lines if line.startswith('scored ') and 'rows/s' in line and 'ETA' in line]
    assert progress and all('/20 rows' in line for line in progress)
    done = [line for line in lines if line.startswith('[')]
    assert len(done) == 2 and all('rows/s' in line for line in done)
    assert any('part-000.parquet' in line and '(5 with errors)' in line for line in done)


def test_resume_recomputes_only_missing_output(env, scored, tmp_path):
    out = tmp_path / 'out'
    shutil.copytree(scored['out'], out)
    keep, redo = out / 'part-000.parquet', out / 'part-001.parquet'
    keep_mtime = keep.stat().st_mtime_ns
    redo.unlink()
    stale = out / (catalog.TMP_PREFIX + 'dead-part-001.parquet')  # what a killed run leaves behind
    stale.write_bytes(b'partial')
    report = score_catalog(_opts(env, input=str(env['cat'] / '*.parquet'), output=str(out)))  # glob input
    assert [f['status'] for f in report['files']] == ['skipped', 'written']
    assert report['rows_scored'] == 7
    assert keep.stat().st_mtime_ns == keep_mtime and redo.exists() and not stale.exists()
    images = pq.read_table(env['cat'] / 'part-001.parquet').column('image').to_pylist()
    _check_output(redo, env['cat'] / 'part-001.parquet', env['kinds']['part-001.parquet'], env['reference'],
                  lambda i: images[i])
    # an output with the wrong row count (truncated, or from another catalog) is not trusted
    pq.write_table(pq.read_table(keep).slice(0, 3), keep)
    plans = prepare(_opts(env, input=str(env['cat']), output=str(out))).plans
    assert [p.complete for p in plans] == [False, True]


def test_resume_notices_changed_input_and_model(env, scored, tmp_path):
    """An input rewritten with the same rows in another order, or another checkpoint, makes its output stale."""
    cat, out = tmp_path / 'cat', tmp_path / 'out'
    shutil.copytree(env['cat'], cat)
    shutil.copytree(scored['out'], out)
    plans = prepare(_opts(env, input=str(cat), output=str(out))).plans
    assert [p.status for p in plans] == ['complete'] * 2  # copy2 keeps size and mtime: the same input
    table = pq.read_table(cat / 'part-001.parquet')
    pq.write_table(table.take(list(range(table.num_rows))[::-1]), cat / 'part-001.parquet')  # same rows, reordered
    assert prepare(_opts(env, input=str(cat), output=str(out))).plans[1].status.startswith('stale: input')
    other = tmp_path / 'other.pth'
    state = torch.load(env['ckpt'], weights_only=True)
    next(iter(state['state_dict'].values())).add_(1.0)
    torch.save(state, other)
    plan = prepare(_opts(env, checkpoint=str(other), input=str(cat / 'part-000.parquet'), output=str(out))).plans[0]
    assert plan.status == 'stale: model (config or checkpoint) changed'
    plan = prepare(_opts(env, input=str(cat / 'part-000.parquet'), output=str(out), prefix='n_')).plans[0]
    assert plan.status == "stale: models changed (added: 'n_'; removed: 'count_')"


def test_overwrite_and_nothing_to_do(env, scored, tmp_path):
    out = tmp_path / 'out'
    shutil.copytree(scored['out'], out)
    single = str(env['cat'] / 'part-001.parquet')  # a single-file input
    target = out / 'part-001.parquet'
    mtime = target.stat().st_mtime_ns
    again = score_catalog(_opts(env, input=single, output=str(out)))  # complete: no Ray work at all
    assert again['files_skipped'] == 1 and again['rows_scored'] == 0 and target.stat().st_mtime_ns == mtime
    forced = score_catalog(_opts(env, input=single, output=str(out), overwrite=True))
    assert forced['files_written'] == 1 and target.stat().st_mtime_ns > mtime
    images = pq.read_table(single).column('image').to_pylist()
    _check_output(target, single, env['kinds']['part-001.parquet'], env['reference'], lambda i: images[i])


def test_path_column_input(env, ray_session, tmp_path):
    out = tmp_path / 'out'
    report = score_catalog(_opts(env, input=str(env['pcat']), output=str(out), image_column=None,
                                 path_column='path', path_root=str(env['images']), prefix='n_', num_actors=2,
                                 decode_in_actor=False, cpus_per_actor=0.5,  # the GPU layout: decode tasks
                                 keep_raw_value=True))
    assert report['columns'] == ['n_value', 'n_value_raw', 'n_label', 'n_probability', 'n_bin_argmax',
                                 'n_bin_argmax_probability', 'n_error']
    table = pq.read_table(out / 'paths.parquet')
    assert table.column_names == ['key', 'path', 'n_value', 'n_value_raw', 'n_label', 'n_probability', 'n_bin_argmax',
                                  'n_bin_argmax_probability', 'n_error']
    raw = np.asarray(table.column('n_value_raw').to_pylist(), dtype=float)
    np.testing.assert_array_equal(np.asarray(table.column('n_value').to_pylist(), dtype=float), np.clip(raw, 0, 9))
    paths = table.column('path').to_pylist()
    errors = table.column('n_error').to_pylist()
    for kind, err in zip(env['path_kinds'], errors):
        assert (err is None) == (kind == 'ok') and (kind == 'ok' or BAD[kind] in err), (kind, err)
    assert 'not found' not in errors[-1]  # an unreachable server is not a missing file
    good = [i for i, k in enumerate(env['path_kinds']) if k == 'ok']

    def read(i):
        p = paths[i].removeprefix('file://')
        return (env['images'] / p).read_bytes()
    expected = env['reference'].predict([read(i) for i in good])
    np.testing.assert_allclose([table.column('n_value')[i].as_py() for i in good], expected['value'], atol=1e-5)


def _calibrated_checkpoint(env, folder: Path, levels=(0.5, 0.9)) -> str:
    """A copy of the test checkpoint with a conformal calibration sidecar fitted for it (synthetic residuals)."""
    from numclip_mm.conformal import file_digest, fit_calibration, sidecar_path
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = str(folder / 'calibrated.pth')
    shutil.copy(env['ckpt'], ckpt)
    rng = np.random.default_rng(3)
    task = env['reference'].task
    probs = rng.dirichlet(np.ones(task.num_bins), size=200)
    pred = rng.uniform(0, 9, size=200)
    fit_calibration(pred, probs, np.clip(pred + rng.normal(0, 1, 200), 0, 9), task, levels,
                    source=dict(checkpoint_sha256=file_digest(ckpt))).save(sidecar_path(ckpt))
    return ckpt


@pytest.mark.parametrize('engine', ['ray', 'in-process'])
def test_interval_columns_from_the_checkpoint_calibration(env, scored, tmp_path, engine):
    """--interval adds {prefix}low_<level>/{prefix}high_<level>: the Predictor's bounds on good rows, nulls on bad
    rows (on Ray's actors and on the in-process threads); outputs scored without them (by the same checkpoint's
    bytes) are stale for a run that asks for them."""
    ckpt = _calibrated_checkpoint(env, tmp_path / 'model')  # a copy of the checkpoint scored['out'] was scored with
    src = env['cat'] / 'part-001.parquet'
    out = tmp_path / 'out'
    out.mkdir()
    shutil.copy(scored['out'] / src.name, out)  # a complete output without intervals: must be re-scored, not skipped
    assert 'count_low_0.9' not in pq.read_schema(out / src.name).names
    assert prepare(_opts(env, checkpoint=ckpt, input=str(src), output=str(out))).plans[0].complete
    on = dict(num_actors=1) if engine == 'ray' else dict(num_actors=None, engine='in-process')
    report = score_catalog(_opts(env, checkpoint=ckpt, input=str(src), output=str(out), intervals=(0.9, 0.5), **on))
    assert report['files_written'] == 1 and report['engine']['name'] == engine
    table = pq.read_table(out / src.name)
    assert table.schema.names[-4:] == ['count_low_0.9', 'count_high_0.9', 'count_low_0.5', 'count_high_0.5']
    ok = np.array([k in GOOD for k in env['kinds'][src.name]])
    value = np.asarray(table.column('count_value').to_pylist(), dtype=float)
    low9, high9, low5, high5 = (np.asarray(table.column(f'count_{c}').to_pylist(), dtype=float)
                                for c in ('low_0.9', 'high_0.9', 'low_0.5', 'high_0.5'))
    assert np.isnan(low9[~ok]).all() and np.isnan(high5[~ok]).all()  # bad rows: null bounds
    assert (low9[ok] <= value[ok] + 1e-9).all() and (value[ok] <= high9[ok] + 1e-9).all()
    assert (high9[ok] - low9[ok] >= high5[ok] - low5[ok] - 1e-9).all()  # more coverage, wider
    cells = pq.read_table(src).column('image').to_pylist()
    predictor = Predictor(env['cfg'], ckpt)
    want = predictor.predict([cells[i] for i in np.flatnonzero(ok)], intervals=(0.9, 0.5))
    np.testing.assert_allclose(low9[ok], want['low_0.9'], atol=1e-5)
    np.testing.assert_allclose(high5[ok], want['high_0.5'], atol=1e-5)


def test_interval_without_calibration_is_refused_up_front(env, tmp_path, capsys):
    src = str(env['cat'] / 'part-001.parquet')
    with pytest.raises(catalog.ScoringSetupError, match='no conformal calibration.*tools/calibrate.py'):
        prepare(_opts(env, input=src, output=str(tmp_path / 'a'), intervals=(0.9,)))
    ckpt = _calibrated_checkpoint(env, tmp_path / 'model', levels=(0.9,))
    with pytest.raises(catalog.ScoringSetupError, match='coverage 0.8'):
        prepare(_opts(env, checkpoint=ckpt, input=src, output=str(tmp_path / 'b'), intervals=(0.8,)))
    with pytest.raises(catalog.ScoringSetupError, match=r'\(0, 1\)'):
        prepare(_opts(env, checkpoint=ckpt, input=src, output=str(tmp_path / 'c'), intervals=(90,)))
    job = prepare(_opts(env, checkpoint='file://' + ckpt, input=src, output=str(tmp_path / 'c'), intervals=(0.9,)))
    assert job.models[0].names['low_0.9'] == 'count_low_0.9'  # a file:// checkpoint finds its sidecar too
    assert cli_main(['--config', env['cfg'], '--checkpoint', env['ckpt'], '--input', src, '--output',
                     str(tmp_path / 'd'), '--interval', '0.9']) == 2
    assert 'no conformal calibration' in capsys.readouterr().err
    assert not (tmp_path / 'd').exists() or not any((tmp_path / 'd').iterdir())


def test_actor_dying_mid_run_is_retried(env, scored, tmp_path):
    """An inference actor that dies mid-run (its process exits at its 2nd batch) is restarted and its work redone:
    every output complete, rows out == rows in, predictions identical to an undisturbed run."""
    marker = tmp_path / 'died'
    out = tmp_path / 'out'
    report = score_catalog(_opts(env, input=str(env['cat']), output=str(out), num_actors=None),
                           actor_class=dying_actor(exit_at_batch=2, marker=str(marker)))
    assert marker.exists()  # it did die
    assert report['files_written'] == 2 and report['rows_scored'] == 20
    for name in env['kinds']:
        got, want = pq.read_table(out / name), pq.read_table(scored['out'] / name)
        assert got.num_rows == pq.read_metadata(env['cat'] / name).num_rows
        assert got.drop_columns(['count_value', 'count_probability']).equals(
            want.drop_columns(['count_value', 'count_probability']))
        np.testing.assert_allclose(np.asarray(got.column('count_value').to_pylist(), dtype=float),
                                   np.asarray(want.column('count_value').to_pylist(), dtype=float), atol=1e-6)


def _same_outputs(env, out, want_dir):
    for name in env['kinds']:
        got, want = pq.read_table(out / name), pq.read_table(want_dir / name)
        assert got.num_rows == pq.read_metadata(env['cat'] / name).num_rows
        assert got.drop_columns(['count_value', 'count_probability']).equals(
            want.drop_columns(['count_value', 'count_probability']))
        np.testing.assert_allclose(np.asarray(got.column('count_value').to_pylist(), dtype=float),
                                   np.asarray(want.column('count_value').to_pylist(), dtype=float), atol=1e-6)


def test_head_start_outputs_equal_the_actors_alone(env, scored, tmp_path, monkeypatch):
    """On this process's own Ray instance the driver scores items from the back while the actors start (the
    default): whoever scored a row, the outputs equal the run without the head start (``scored``), every row once
    (the collector refuses duplicates), and the summary counts the driver's share."""
    from numclip_mm.batch import pipeline
    taken = []
    real = pipeline._driver_actor

    def recording(job, claims):
        actor = real(job, claims)

        def call(batch):
            taken.append((int(batch['file'][0]), int(batch['row_group'][0])))
            return actor(batch)
        return call
    monkeypatch.setattr(pipeline, '_driver_actor', recording)
    out = tmp_path / 'out'
    report = score_catalog(_opts(env, input=str(env['cat']), output=str(out), num_actors=None))
    head = report['head_start']
    assert head['used'] and head['items'] == len(taken)
    rows = {(f, g): n for f, p in enumerate(sorted(env['cat'].glob('*.parquet')))
            for g, n in enumerate(pq.ParquetFile(p).metadata.row_group(i).num_rows
                                  for i in range(pq.ParquetFile(p).num_row_groups))}
    assert head['rows'] == sum(rows[t] for t in taken)
    items = sorted(rows)
    assert taken == items[::-1][:len(taken)]  # from the back
    _same_outputs(env, out, scored['out'])
    assert report['files_written'] == 2 and report['rows_scored'] == 20
    assert report['first_output_s'] <= report.get('actors_first_output_s', float('inf'))  # (none: the driver did all)


def test_in_process_engine_outputs_equal_the_actors(env, scored, tmp_path):
    """The in-process engine (threads of the driver, no Ray; asked for while a Ray runs in this process) on the
    same hostile catalog: the same output files as the actors' (each odd row's error, each prediction)."""
    out = tmp_path / 'out'
    report = score_catalog(_opts(env, input=str(env['cat']), output=str(out), num_actors=None, engine='in-process'))
    assert report['engine'] == dict(name='in-process', reason='--engine in-process') and 'ray_ready_s' not in report
    _same_outputs(env, out, scored['out'])
    assert report['files_written'] == 2 and report['rows_scored'] == 20
    assert [f['errors'] for f in report['files']] == [5, 1]


def test_head_start_failure_fails_only_its_file(env, scored, tmp_path, monkeypatch):
    """The driver fails on the item it claimed (the actors skipped it): that file fails with the message, the other
    is written, the job ends with ScoringFailed; the next run scores the failed file (and nothing else)."""
    from numclip_mm.batch import pipeline
    from numclip_mm.batch.pipeline import ScoringFailed

    def failing(job, claims):
        def call(batch):
            raise OSError('the disk went away')
            yield  # (a generator, like the actor's)
        return call
    monkeypatch.setattr(pipeline, '_driver_actor', failing)
    out = tmp_path / 'out'
    with pytest.raises(ScoringFailed, match='part-001.parquet: OSError: the disk went away') as failed:
        score_catalog(_opts(env, input=str(env['cat']), output=str(out)))
    report = failed.value.report
    assert report['head_start']['used'] and report['head_start']['items'] == 0
    assert [(f['input'].rsplit('/', 1)[-1], f['status']) for f in report['files']] == [
        ('part-000.parquet', 'written'), ('part-001.parquet', 'failed')]
    assert sorted(p.name for p in out.iterdir()) == ['part-000.parquet']
    monkeypatch.undo()
    again = score_catalog(_opts(env, input=str(env['cat']), output=str(out), head_start=False))
    assert again['files_written'] == 1 and again['files_skipped'] == 1
    _same_outputs(env, out, scored['out'])


def test_worker_dying_again_and_again_ends_the_job(env, ray_session, tmp_path):
    """No endless loop: an actor that dies at every attempt ends the job after the bounded retries, with a message."""
    from numclip_mm.batch.pipeline import ScoringFailed
    with pytest.raises(ScoringFailed, match='retries'):
        score_catalog(_opts(env, input=str(env['cat'] / 'part-001.parquet'), output=str(tmp_path / 'out'),
                            max_retries=1), actor_class=dying_actor(exit_at_batch=1, load_models=False))
    assert not (tmp_path / 'out' / 'part-001.parquet').exists()


def test_job_stopped_mid_stream_leaves_no_ray_data_thread(env, ray_session, tmp_path, monkeypatch):
    """A signal that stops the job after its first predictions (the command's Stopped, raised in the driver's loop)
    closes Ray Data's stream early; Ray Data's block prefetcher thread, which stops only at the end of a complete
    iteration, is stopped too: left running it calls ray.wait when woken, and if that happens while the stopped
    command shuts Ray down, Ray ends the process with exit 1 instead of the command's 143."""
    from numclip_mm.batch import collection

    class Stopped(BaseException):
        pass

    def stop(self, n):  # the first predictions from the stream (no head start: nothing comes before them)
        raise Stopped()

    def prefetchers():
        return {t for t in threading.enumerate() if t.name == 'Prefetcher' and t.is_alive()}
    before = prefetchers()
    monkeypatch.setattr(collection.Progress, 'add_rows', stop)
    with pytest.raises(Stopped):
        score_catalog(_opts(env, input=str(env['cat']), output=str(tmp_path / 'out'), head_start=False))
    assert prefetchers() == before
    assert not list((tmp_path / 'out').glob('*.parquet'))


def test_failed_job_releases_its_actors_while_its_error_is_held(env, ray_session, tmp_path):
    """A job whose actors raise at every batch ends with ScoringFailed naming the error; its actors (and the CPUs
    they hold) are released at once although the caller still holds the exception and the collector is off: Ray
    Data releases actors by reference count, and the chained exceptions' frames used to hold them (the next job in
    the same process then found no CPU free)."""
    import gc

    import ray

    from numclip_mm.batch.pipeline import ScoringFailed
    total = ray.cluster_resources()['CPU']
    gc.disable()
    logging.disable(logging.CRITICAL)  # pytest keeps every log record, and Ray Data's failure records hold frames
    try:
        with pytest.raises(ScoringFailed, match='RuntimeError: broken actor') as failed:
            score_catalog(_opts(env, input=str(env['cat'] / 'part-001.parquet'), output=str(tmp_path / 'out'),
                                max_retries=0), actor_class=raising_actor('broken actor'))
        deadline = time.monotonic() + 10
        while ray.available_resources().get('CPU', 0) < total:
            assert time.monotonic() < deadline, f'CPUs still held: {ray.available_resources()}'
            time.sleep(0.1)
        assert 'broken actor' in str(failed.value.__cause__)  # the cause is kept, without its frames
    finally:
        logging.disable(logging.NOTSET)
        gc.enable()
    assert not (tmp_path / 'out' / 'part-001.parquet').exists()


def test_driver_traces_each_model_unless_switched_off_or_on_gpus(env, tmp_path, monkeypatch, caplog):
    """The driver reads the checkpoint once (the digest the outputs record is of those bytes), builds the model from
    them and traces it; actors get the trace and nothing to build from. Switched off, on GPUs, or for a model that
    cannot be traced, actors get config and checkpoint, and the first log line says why."""
    from numclip_mm.batch.cluster import Sizing
    from numclip_mm.batch.pipeline import _models_loaded_as
    from numclip_mm.prediction_graph import GraphTraceError
    from numclip_mm.shared import file_digest
    src, out = env['cat'] / 'part-001.parquet', str(tmp_path / 'out')
    cpu = Sizing(2, 1.0, 0.0, 1, True, 1.0, 64)
    job = prepare(_opts(env, input=str(src), output=out))
    model = job.models[0]
    assert model.graph is not None and model.graph_note == ''
    assert model.identity['checkpoint'] == model.checkpoint_sha256 == file_digest(env['ckpt'])
    assert model.actor_spec('ref') == dict(prefix='count_', calibration=None, graph='ref')  # no config to unpickle
    assert Predictor.from_graph(model.graph).task == env['reference'].task
    assert _models_loaded_as(job, cpu) == "the driver's TorchScript trace of the model"
    assert _models_loaded_as(job, Sizing(1, 1.0, 1.0, 1, False, 1.0, 256)) == (
        'config and checkpoint, building the model (inference on GPUs)')
    for options, note in ((dict(graph=False), 'switched off (--no-graph)'),
                          (dict(num_gpus_per_actor=1), 'inference on GPUs')):
        model = prepare(_opts(env, input=str(src), output=out, **options)).models[0]
        assert model.graph is None and model.graph_note == note
        assert model.checkpoint_sha256 == file_digest(env['ckpt'])
        assert model.actor_spec()['checkpoint_sha256'] == model.checkpoint_sha256
    monkeypatch.setattr(Predictor, 'trace', lambda self: (_ for _ in ()).throw(GraphTraceError('it branches')))
    with caplog.at_level(logging.WARNING, logger='numclip_mm.batch'):
        job = prepare(_opts(env, input=str(src), output=out))
    assert job.models[0].graph is None and job.models[0].graph_note == 'cannot be traced: it branches'
    assert 'actors build the model themselves (it cannot be traced: it branches)' in caplog.text
    assert _models_loaded_as(job, cpu) == (
        'config and checkpoint, building the model (count_*: cannot be traced: it branches)')


def test_graph_cache_spares_the_next_job_the_build_and_trace(env, scored, tmp_path, monkeypatch):
    """The first job with a model keeps its trace in the graph cache; the next one with the same checkpoint bytes,
    config and code takes it from there (no model built: the trace would raise), with the same identity (its outputs
    resume the first one's) and the same outputs. Other checkpoint bytes are another key."""
    from numclip_mm.batch import pipeline
    cache = str(tmp_path / 'cache')
    src, out = env['cat'] / 'part-001.parquet', str(tmp_path / 'out')
    first = prepare(_opts(env, input=str(src), output=out, graph_cache=cache)).models[0]
    assert first.graph_source == f'traced now, kept in the graph cache ({cache})'
    assert len(list((tmp_path / 'cache').glob('*.pt'))) == 1

    def no_build(*args, **kwargs):
        raise AssertionError('the model was built although its trace is in the cache')
    monkeypatch.setattr(pipeline, '_trace_model', no_build)
    monkeypatch.setattr('numclip_mm.inference.load_config', no_build)  # (nor its model stack registered)
    second = prepare(_opts(env, input=str(src), output=out, graph_cache=cache)).models[0]
    assert second.graph_source == f'the graph cache ({cache})'
    assert second.graph == first.graph and second.identity == first.identity
    assert (second.task_name, second.input_size, second.names) == (first.task_name, first.input_size, first.names)
    assert second.checkpoint_sha256 == first.checkpoint_sha256
    report = score_catalog(_opts(env, input=str(env['cat']), output=str(tmp_path / 'all'), graph_cache=cache,
                                 num_actors=None))
    assert report['models'][0]['graph'] == f'the graph cache ({cache})'
    _same_outputs(env, tmp_path / 'all', scored['out'])
    monkeypatch.undo()
    other = tmp_path / 'other.pth'
    torch.manual_seed(7)
    torch.save({'state_dict': Predictor(env['cfg']).model.state_dict()}, other)
    third = prepare(_opts(env, checkpoint=str(other), input=str(src), output=out, graph_cache=cache)).models[0]
    assert third.graph_source.startswith('traced now') and third.graph != first.graph
    off = prepare(_opts(env, input=str(src), output=out, graph_cache='off')).models[0]
    assert off.graph_source == 'traced now'


def test_stale_sidecar_matters_only_with_intervals(env, tmp_path):
    """A calibration sidecar fitted for another checkpoint: a plain Predictor refuses it (it would give wrong
    intervals), ``calibration=False`` does not look for it, and the scorer's driver, which checks a calibration only
    for --interval, plans the job."""
    from numclip_mm.conformal import fit_calibration, sidecar_path
    ckpt = tmp_path / 'model.pth'
    shutil.copy(env['ckpt'], ckpt)
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 9, 100)
    stale = fit_calibration(truth + rng.normal(0, 0.5, 100), rng.dirichlet(np.ones(5), 100), truth, 'count', [0.9],
                            source=dict(checkpoint_sha256='0' * 64))
    stale.save(sidecar_path(str(ckpt)))
    with pytest.raises(ValueError, match='fitted for another checkpoint'):
        Predictor(env['cfg'], str(ckpt))
    assert Predictor(env['cfg'], str(ckpt), calibration=False).calibration is None
    job = prepare(_opts(env, checkpoint=str(ckpt), input=str(env['cat'] / 'part-001.parquet'),
                        output=str(tmp_path / 'out')))
    assert job.models[0].graph is not None and job.models[0].calibration is None


def test_actors_may_run_a_row_group_ahead_of_the_driver(env, ray_session, tmp_path):
    """Decoding in the actors, an actor may yield a whole row group's blocks before the driver takes them (Ray
    Data's default of 2 kept actors waiting); decode tasks feeding actors keep the default."""
    from numclip_mm.batch.cluster import Sizing
    from numclip_mm.batch.pipeline import build_dataset, stream_buffer_blocks, work_items
    assert [stream_buffer_blocks(n, 64) for n in (0, 10, 1000, 1025, 10 ** 6)] == [2, 2, 16, 17, 64]
    job = prepare(_opts(env, input=str(env['cat']), output=str(tmp_path / 'out')))  # row groups of 4 rows
    items = work_items(job.plans)
    in_actor = build_dataset(job, items, Sizing(1, 1.0, 0.0, 1, True, 1.0, 1))
    assert in_actor.context._max_num_blocks_in_streaming_gen_buffer == 4
    in_tasks = build_dataset(job, items, Sizing(1, 1.0, 0.0, 1, False, 1.0, 1))
    assert in_tasks.context._max_num_blocks_in_streaming_gen_buffer == 2


def test_decode_tasks_hand_on_each_batch_as_one_block(env, ray_session, tmp_path):
    """In the GPU layout (decode tasks feeding the actors) a decoded batch travels as one Ray block. Ray Data cuts
    a map's output to the context's target block size, and the target was the prediction columns' (a few KB): every
    decoded batch became one block per row, 20,000 objects for 20,000 images, and on a GPU machine the scorer ran at
    a quarter of a DataLoader loop (docs/benchmarks.md)."""
    from numclip_mm.batch.cluster import Sizing
    from numclip_mm.batch.pipeline import build_dataset, decoded_block_bytes, work_items
    assert decoded_block_bytes(4, [(32, 32)]) == int(1.25 * 4 * (3 * 32 * 32 + 32))
    assert decoded_block_bytes(2, [(32, 32), None]) == int(1.25 * 2 * (3 * 32 * 32 + 3 * 224 * 224 + 32))
    job = prepare(_opts(env, input=str(env['cat']), output=str(tmp_path / 'out')))  # row groups of 4 rows
    items = work_items(job.plans)
    ds = build_dataset(job, items, Sizing(1, 0.5, 0.0, 1, False, 1.0, 4)).materialize()
    found = re.search(r'MapBatches\(RowGroupDecoder\)\S*: (\d+) tasks executed, (\d+) blocks produced', ds.stats())
    assert found, ds.stats()
    rows = sum(n for p in job.plans for n in p.row_group_rows)
    assert int(found.group(2)) == len(items) < rows  # one block per batch of 4 rows (one per row group)
    assert ds.count() == rows


def test_no_graph_flag_reaches_the_options(env):
    from numclip_mm.batch.score import build_parser, options_from_args
    parser = build_parser()
    base = ['--config', env['cfg'], '--checkpoint', env['ckpt'], '--input', 'in', '--output', 'out']
    assert options_from_args(parser.parse_args(base), parser).graph is True
    assert options_from_args(parser.parse_args([*base, '--no-graph']), parser).graph is False


@pytest.mark.parametrize('graph', [True, False], ids=['graph', 'actors-build'])
def test_checkpoint_replaced_after_planning(env, ray_session, tmp_path, graph):
    """The outputs record the checkpoint digest taken while planning, and a checkpoint file replaced after that (a
    finished copy moved over it) never scores under it. With the driver's graph (the default) the actors never read
    the file: the job scores with the bytes the driver hashed and traced. Actors that build the model themselves
    refuse the replaced file (they load exactly the bytes they checked): the job fails naming the file, and no
    output is written (none labelled with the planned digest but another model's values)."""
    from numclip_mm.batch.pipeline import ScoringFailed
    ckpt = tmp_path / 'ck.pth'
    shutil.copy(env['ckpt'], ckpt)
    out = tmp_path / 'out'
    src = env['cat'] / 'part-001.parquet'
    job = prepare(_opts(env, checkpoint=str(ckpt), input=str(src), output=str(out), graph=graph))
    planned = job.models[0].identity['checkpoint']
    assert (job.models[0].graph is not None) == graph
    other = torch.load(env['ckpt'], weights_only=True)
    other['state_dict'] = {k: v + 1 if v.is_floating_point() else v for k, v in other['state_dict'].items()}
    torch.save(other, tmp_path / 'epoch_29.pth')
    os.replace(tmp_path / 'epoch_29.pth', ckpt)  # as `mv` of a finished copy
    if graph:
        run(job)
        _check_output(out / 'part-001.parquet', src, env['kinds']['part-001.parquet'], env['reference'],
                      lambda i: pq.read_table(src).column('image')[i].as_py())
        recorded = json.loads(pq.read_metadata(out / 'part-001.parquet').metadata[catalog.METADATA_KEY])
        assert recorded['model']['count_']['checkpoint'] == planned
        return
    with pytest.raises(ScoringFailed) as err:
        run(job)
    msg = str(err.value)
    assert 'changed since the job was planned' in msg and str(ckpt) in msg and planned in msg
    assert 'out of memory' not in msg
    assert not out.exists() or not list(out.glob('*.parquet'))


def test_trained_checkpoint_scores_without_its_clip_file(env, ray_session, tmp_path):
    """A config whose model.clip.pretrained is a CLIP file: the trained checkpoint scores after the file is gone
    (building is not loading; the checkpoint holds every weight)."""
    from numclip_mm.models.clip_loader import build_open_clip
    clip_file = tmp_path / 'clip.pt'
    torch.manual_seed(5)
    torch.save(build_open_clip('numclip-tiny').state_dict(), clip_file)
    cfg = tmp_path / 'pretrained.py'
    cfg.write_text(f"_base_ = [{env['cfg']!r}]\nmodel = dict(clip=dict(pretrained={str(clip_file)!r}))\n")
    trained = Predictor(str(cfg))  # zero-shot: the config's pretrained weights applied (init_weights)
    ckpt = tmp_path / 'trained.pth'
    torch.save({'state_dict': trained.model.state_dict(), 'meta': {}}, ckpt)
    clip_file.unlink()
    out = tmp_path / 'out'
    src = env['cat'] / 'part-001.parquet'
    report = score_catalog(_opts(env, config=str(cfg), checkpoint=str(ckpt), input=str(src), output=str(out)))
    assert report['rows_scored'] == 7
    got = pq.read_table(out / 'part-001.parquet')
    ok = [i for i, k in enumerate(env['kinds']['part-001.parquet']) if k in GOOD]
    cells = pq.read_table(src).column('image').to_pylist()
    expected = trained.predict([cells[i] for i in ok])
    np.testing.assert_allclose([got.column('count_value')[i].as_py() for i in ok], expected['value'], atol=1e-5)


def test_worker_side_modules_stay_light():
    """The write tasks and the driver import numclip_mm.batch.pipeline/writers/catalog/columns/decode: importing them
    must not pull in torch, mmpretrain or numclip_mm's model code (each new Ray worker would pay seconds of CPU for
    imports)."""
    import subprocess
    import sys
    code = ('import sys, numclip_mm.batch.pipeline, numclip_mm.batch.writers, numclip_mm.batch.catalog, '
            'numclip_mm.batch.columns, numclip_mm.batch.decode, numclip_mm.batch.actor; '
            'print(sorted(m for m in ("torch", "numclip_mm.inference", "numclip_mm.models", "mmpretrain", "mmengine") '
            'if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.stdout.strip() == '[]'


def test_failing_batch_is_retried_row_by_row():
    """When a batch's inference raises, its rows are retried alone: only the guilty row gets the error, the others
    their predictions, and a row that already had a decode error keeps it."""
    from numclip_mm.batch.actor import InferenceActor

    class Picky:
        def check_intervals(self, levels):
            assert levels == ()

        def predict_tensors(self, inputs, intervals=()):
            if (inputs[:, 0, 0, 0] == 255).any():
                raise RuntimeError('cannot score this one')
            v = inputs[:, 0, 0, 0].double().numpy()
            return dict(value=v, value_raw=v, probability=np.full(len(v), 0.5),
                        label=np.array(['few'] * len(v), dtype=object), bin_argmax_probability=np.full(len(v), 0.6),
                        bin_argmax=np.array(['many'] * len(v), dtype=object))
    actor = InferenceActor.__new__(InferenceActor)
    actor.attach([Picky()])
    tensors = np.zeros((4, 3, 2, 2), dtype=np.uint8)
    tensors[:, 0, 0, 0] = [1, 255, 3, 4]
    table = actor.predict_rows(np.arange(4), np.zeros(4), [None, None, None, 'null image'], tensors, 7)
    assert table.column('value').to_pylist() == [1.0, None, 3.0, None]
    assert table.column('bin_argmax').to_pylist() == ['many', None, 'many', None]
    assert table.column('bin_argmax_probability').to_pylist() == [0.6, None, 0.6, None]
    errors = table.column('error').to_pylist()
    assert errors[0] is None and errors[2] is None and errors[3] == 'null image'
    assert errors[1] == 'inference failed: RuntimeError: cannot score this one'
    assert table.column('__numclip_file').to_pylist() == [7] * 4


# --------------------------------------------------------------------------------------------------------------
# errors before any work (no Ray needed: prepare() runs before Ray starts)

def test_up_front_errors(env, tmp_path):
    cat = str(env['cat'])
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        prepare(_opts(env, checkpoint=str(tmp_path / 'missing.pth'), input=cat, output=str(tmp_path / 'o')))
    with pytest.raises(CheckpointMismatchError, match='tiny.pth'):
        prepare(_opts(env, config=env['bad_cfg'], input=cat, output=str(tmp_path / 'o')))
    with pytest.raises(catalog.ScoringSetupError, match="no image column 'img'"):
        prepare(_opts(env, image_column='img', input=cat, output=str(tmp_path / 'o')))
    with pytest.raises(catalog.ScoringSetupError, match='expected string'):
        prepare(_opts(env, image_column=None, path_column='image', input=cat, output=str(tmp_path / 'o')))
    with pytest.raises(catalog.ScoringSetupError, match='would overwrite the input'):
        prepare(_opts(env, input=cat, output=cat))
    with pytest.raises(catalog.ScoringSetupError, match='would overwrite the input'):
        prepare(_opts(env, input=str(env['cat'] / 'part-000.parquet'), output=cat + '/'))
    link = tmp_path / 'link-to-input'
    link.symlink_to(env['cat'], target_is_directory=True)  # another name for the input folder
    with pytest.raises(catalog.ScoringSetupError, match='same file after resolving links'):
        prepare(_opts(env, input=cat, output=str(link)))
    hard = tmp_path / 'hard'
    hard.mkdir()
    os.link(env['cat'] / 'part-001.parquet', hard / 'part-001.parquet')  # a hard link: same inode, other folder
    with pytest.raises(catalog.ScoringSetupError, match='would overwrite the input'):
        prepare(_opts(env, input=str(env['cat'] / 'part-001.parquet'), output=str(hard)))
    with pytest.raises(catalog.ScoringSetupError, match='--zero-shot'):
        prepare(_opts(env, checkpoint=None, input=cat, output=str(tmp_path / 'o')))
    with pytest.raises(catalog.ScoringSetupError, match='would be random'):
        prepare(_opts(env, checkpoint=None, zero_shot=True, input=cat, output=str(tmp_path / 'o')))
    with pytest.raises(catalog.ScoringSetupError, match='no input Parquet files matched'):
        prepare(_opts(env, input=str(tmp_path / '*.parquet'), output=str(tmp_path / 'o')))
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(catalog.ScoringSetupError, match='no input Parquet files matched'):
        prepare(_opts(env, input=str(empty), output=str(tmp_path / 'o')))
    with pytest.raises(catalog.ScoringSetupError, match='does not exist'):
        prepare(_opts(env, input=str(tmp_path / 'nothing.parquet'), output=str(tmp_path / 'o')))
    clash = tmp_path / 'clash'
    clash.mkdir()
    pq.write_table(pa.table({'image': pa.array([b''], pa.binary()), 'count_value': [1.0]}), clash / 'c.parquet')
    with pytest.raises(catalog.ScoringSetupError, match='another --prefix'):
        prepare(_opts(env, input=str(clash), output=str(tmp_path / 'o')))
    assert not (tmp_path / 'o').exists()  # nothing was created


def test_cli_reports_setup_errors_with_exit_code_2(env, tmp_path, capsys, monkeypatch):
    from numclip_mm.batch import score
    starts = []
    real_start = score.RayStarter.start
    monkeypatch.setattr(score.RayStarter, 'start', lambda self: starts.append(self) or real_start(self))
    # missing files: refused before Ray is started (nothing to wait for, nothing left running)
    code = cli_main(['--config', env['cfg'], '--checkpoint', str(tmp_path / 'x.pth'), '--input', str(env['cat']),
                     '--output', str(tmp_path / 'o')])
    assert code == 2 and 'checkpoint not found' in capsys.readouterr().err
    code = cli_main(['--config', str(tmp_path / 'none.py'), '--checkpoint', env['ckpt'], '--input', str(env['cat']),
                     '--output', str(tmp_path / 'o')])
    assert code == 2 and f'config not found: {tmp_path / "none.py"}' in capsys.readouterr().err
    assert starts == []
    with pytest.raises(catalog.ScoringSetupError, match=r"--precision must be one of \['bf16', 'fp16', 'fp32'\]"):
        preflight(_opts(env, input=str(env['cat']), output=str(tmp_path / 'o'), precision='fp8'))
    # a checkpoint carrying a pickle payload: refused up front with the loader's message, and the payload never runs
    marker = tmp_path / 'payload_ran'
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': env['reference'].model.state_dict(), 'note': Payload(str(marker))}, evil)
    code = cli_main(['--config', env['cfg'], '--checkpoint', str(evil), '--input', str(env['cat']),
                     '--output', str(tmp_path / 'o')])
    assert code == 2 and 'refusing to load checkpoint' in capsys.readouterr().err and not marker.exists()


def test_input_resolution(env):
    fs, files = catalog.resolve_inputs(str(env['cat']))
    assert [Path(f).name for f in files] == ['part-000.parquet', 'part-001.parquet']  # README.txt ignored
    _, files = catalog.resolve_inputs(str(env['cat'] / 'part-00[1].parquet'))
    assert [Path(f).name for f in files] == ['part-001.parquet']
    _, files = catalog.resolve_inputs('file://' + str(env['cat'] / 'part-000.parquet'))
    assert files == [str(env['cat'] / 'part-000.parquet')]
