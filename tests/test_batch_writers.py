"""The driver-side writers of a private Ray instance (numclip_mm.batch.writers.ThreadWriters): outputs as the Ray
task writes them, bounded and cancellable, no temporary left behind. The Ray-task writers are walked by every
in-process scorer test (Ray already running in the test process) and by the `ray job submit` recipe."""
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from numclip_mm.batch import catalog, writers
from numclip_mm.batch.columns import CELL_CRC, ROW_INDEX, cell_crcs

NAMES = {'value': 'age_value', 'error': 'age_error'}


def _input(path, rows: int, row_group_size: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [rng.bytes(int(n)) for n in rng.integers(10, 60, rows)]
    pq.write_table(pa.table({'id': np.arange(rows), 'image': pa.array(images, pa.binary())}), path,
                   row_group_size=row_group_size)
    fs, local = catalog.url_to_fs(str(path))
    meta = pq.read_metadata(path)
    plan = catalog.FilePlan(input=local, output=str(path.parent / 'out' / path.name), num_rows=rows,
                            row_group_rows=[meta.row_group(i).num_rows for i in range(meta.num_row_groups)],
                            identity=catalog.file_identity(fs, local))
    (path.parent / 'out').mkdir(exist_ok=True)
    errors = [None] * rows
    errors[3] = 'decode failed: not an image'
    predictions = pa.table({ROW_INDEX: np.arange(rows), CELL_CRC: cell_crcs(pa.array(images, pa.binary())),
                            'value': pa.array(np.linspace(0, 1, rows), mask=np.arange(rows) == 3),
                            'error': pa.array(errors, pa.string())})
    return plan, predictions


def _args(plan, predictions):
    return plan, predictions, NAMES, 'image', {'model': 'm'}, ['error']


def test_thread_writers_write_every_output_like_the_task(tmp_path):
    plans = [_input(tmp_path / f'p{i}.parquet', rows=25 + i, seed=i) for i in range(3)]
    pool = writers.ThreadWriters(max_in_flight=2)
    handles = [pool.submit(*_args(*p)) for p in plans]
    assert sorted(pool.done(handles, block='all'), key=handles.index) == handles
    assert [pool.result(h) for h in handles] == [1, 1, 1]  # the rows with an error, per file
    pool.close()
    for plan, predictions in plans:
        out = pq.read_table(plan.output)
        assert out.column_names == ['id', 'image', 'age_value', 'age_error']
        assert out.column('id').to_pylist() == list(range(plan.num_rows))  # input order, every row
        assert out.column('age_value').equals(predictions.column('value'))
        assert out.schema.metadata[catalog.METADATA_KEY] == b'{"model": "m"}'
        codecs = {c.path_in_schema: c.compression for c in map(pq.read_metadata(plan.output).row_group(0).column,
                                                                 range(4))}
        assert codecs == {'id': 'SNAPPY', 'image': 'UNCOMPRESSED', 'age_value': 'SNAPPY', 'age_error': 'SNAPPY'}
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['p0.parquet', 'p1.parquet', 'p2.parquet']


def test_output_compression_skips_only_what_did_not_compress(tmp_path):
    """Encoded images (random bytes here) are not compressed again; a compressible binary column, nested columns and
    the columns of an input stored uncompressed (which says nothing about its data) get the codec."""
    rng = np.random.default_rng(0)
    images = [rng.bytes(200) for _ in range(50)]
    table = pa.table({'image': pa.array(images, pa.binary()), 'blank': pa.array([bytes(200)] * 50, pa.binary()),
                      'hf': pa.array([{'bytes': b, 'path': f'/data/catalog/photos/2024/{i:04d}.jpg'}
                                      for i, b in enumerate(images)])})
    pq.write_table(table, tmp_path / 'snappy.parquet', compression='snappy')
    pq.write_table(table, tmp_path / 'plain.parquet', compression='none')
    schema = table.schema.append(pa.field('age_value', pa.float64()))
    assert catalog.output_compression(pq.read_metadata(tmp_path / 'snappy.parquet'), schema) == {
        'image': 'NONE', 'blank': 'snappy', 'hf.bytes': 'NONE', 'hf.path': 'snappy', 'age_value': 'snappy'}
    assert set(catalog.output_compression(pq.read_metadata(tmp_path / 'plain.parquet'), schema).values()) == {
        'snappy'}


def test_thread_writers_report_a_changed_input_per_file(tmp_path):
    plan, predictions = _input(tmp_path / 'a.parquet', 20)
    good, good_predictions = _input(tmp_path / 'b.parquet', 20)
    crcs = predictions.column(CELL_CRC).to_numpy().copy()
    crcs[13] += 1  # row 13's cell is not the one that was scored
    predictions = predictions.set_column(1, CELL_CRC, pa.array(crcs))
    pool = writers.ThreadWriters(max_in_flight=4)
    bad, ok = pool.submit(*_args(plan, predictions)), pool.submit(*_args(good, good_predictions))
    assert pool.done([bad, ok], block='all')
    with pytest.raises(RuntimeError, match=r'a.parquet changed while it was scored \(row 13 differs\)'):
        pool.result(bad)
    assert pool.result(ok) == 1
    pool.close()
    assert [p.name for p in (tmp_path / 'out').iterdir()] == ['b.parquet']  # no output and no temporary for a


def test_close_with_cancel_stops_writes_in_flight_and_leaves_no_temporary(tmp_path, monkeypatch):
    """A signal or a failure while a write runs: close(cancel=True) returns once the write has stopped at its next
    batch of rows; the output is not committed and its temporary is gone."""
    plan, predictions = _input(tmp_path / 'big.parquet', rows=40)
    monkeypatch.setattr(catalog, '_read_batch_rows', lambda meta: 10)  # 4 batches: the write checks 4 times
    started, release = threading.Event(), threading.Event()
    original = writers.check_crcs

    def slow_check(*args):
        started.set()
        release.wait(10)
        original(*args)
    monkeypatch.setattr(writers, 'check_crcs', slow_check)
    pool = writers.ThreadWriters(max_in_flight=1)
    handle = pool.submit(*_args(plan, predictions))
    assert started.wait(10)
    temporaries = [p.name for p in (tmp_path / 'out').iterdir()]
    assert len(temporaries) == 1 and temporaries[0].startswith(catalog.TMP_PREFIX)  # mid-write
    threading.Timer(0.2, release.set).start()  # the first batch finishes after close() has asked to stop
    pool.close(cancel=True)
    assert handle.done() and pool.done([handle]) == [handle]
    with pytest.raises(writers.WriteCancelled, match='big.parquet: the job is stopping'):
        pool.result(handle)
    assert list((tmp_path / 'out').iterdir()) == []


def test_done_waits_as_asked(tmp_path, monkeypatch):
    """'none' returns at once with what has finished, 'any' waits for one, 'all' for every handle."""
    gate = threading.Event()
    original = writers.write_output

    def gated(*args, **kwargs):
        gate.wait(10)
        return original(*args, **kwargs)
    monkeypatch.setattr(writers, 'write_output', gated)
    plans = [_input(tmp_path / f'p{i}.parquet', rows=12, seed=i) for i in range(2)]
    pool = writers.ThreadWriters(max_in_flight=2)
    handles = [pool.submit(*_args(*p)) for p in plans]
    assert pool.done(handles) == [] and pool.done([]) == []
    gate.set()
    assert len(pool.done(handles, block='any')) >= 1
    assert set(pool.done(handles, block='all')) == set(handles)
    pool.close()
