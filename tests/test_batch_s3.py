"""The scorer on an object store, for real: catalogs, path-column images and outputs on ``s3://`` through
fsspec/s3fs against moto's S3 server on loopback, resume after a killed writer, and the commit
(no rename on S3: an output appears only when its upload completes).

The server is the session's (conftest's ``s3_server``): its endpoint and fake credentials are in the environment
before the shared Ray starts, so every worker sees it.
"""
import contextlib
import io
import os
import signal
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import RUN_MARK, wait_until_gone, write_tiny_config
from PIL import Image

pytest.importorskip('moto')
s3fs = pytest.importorskip('s3fs')

TEST_TIMEOUT_S = 300  # per test (conftest's module_timeout): a hung Ray pipeline fails instead of hanging CI
BUCKET = 'numclip-test'


def _png(rng, h, w):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format='PNG')
    return buf.getvalue()


@pytest.fixture(scope='module')
def s3(s3_server, ray_session, tmp_path_factory):
    """A bucket on the session's moto server (conftest's ``s3_server``: the endpoint and fake credentials are in the
    environment of this process and of the shared Ray's workers; the module is skipped without moto)."""
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(BUCKET)
    return dict(fs=fs, endpoint=s3_server, root=tmp_path_factory.mktemp('s3'))


@pytest.fixture(scope='module')
def job(s3):
    """Config + checkpoint (the checkpoint on S3 too), a 2-file bytes catalog and a path catalog whose images are
    S3 keys, all uploaded."""
    from numclip_mm.inference import Predictor
    root, fs = s3['root'], s3['fs']
    cfg = write_tiny_config(root / 'tiny.py')
    torch.manual_seed(5)
    reference = Predictor(cfg)
    ckpt = root / 'tiny.pth'
    torch.save({'state_dict': reference.model.state_dict()}, ckpt)
    fs.put_file(str(ckpt), f'{BUCKET}/models/tiny.pth')
    rng = np.random.default_rng(0)
    images = {}
    for f in range(2):
        cells = [_png(rng, 20 + i, 28) for i in range(7)] + [b'garbage']
        images[f'p{f}.parquet'] = cells
        buf = io.BytesIO()
        pq.write_table(pa.table({'id': range(8), 'image': pa.array(cells, pa.binary())}), buf, row_group_size=3)
        fs.pipe_file(f'{BUCKET}/catalog/p{f}.parquet', buf.getvalue())
    for i in range(3):
        fs.pipe_file(f'{BUCKET}/images/{i}.png', images['p0.parquet'][i])
    paths = [f's3://{BUCKET}/images/{i}.png' for i in range(3)] + [f's3://{BUCKET}/images/missing.png']
    buf = io.BytesIO()
    pq.write_table(pa.table({'path': paths}), buf)
    fs.pipe_file(f'{BUCKET}/paths/paths.parquet', buf.getvalue())
    return dict(cfg=cfg, ckpt=f's3://{BUCKET}/models/tiny.pth', reference=reference, images=images)


def _opts(job, **kw):
    from numclip_mm.batch.pipeline import ScoreOptions
    base = dict(config=job['cfg'], checkpoint=job['ckpt'], batch_size=4,
                num_actors=1)  # a few rows: a second actor would only add its start-up (the CLI test runs the default)
    base.update(kw)
    return ScoreOptions(**base)


def _read(fs, key):
    fs.invalidate_cache()
    with fs.open(key, 'rb') as f:
        return pq.read_table(f)


def test_predictor_reads_s3_paths(s3, job):
    """Predictor.predict('s3://...') reads the object through the scorer's image reader: the same prediction as
    its bytes; a missing key is named."""
    cells = job['images']['p0.parquet'][:2]
    got = job['reference'].predict([f's3://{BUCKET}/images/{i}.png' for i in range(2)])
    want = job['reference'].predict(cells)
    assert got['value'].tolist() == want['value'].tolist()
    with pytest.raises(OSError, match='missing.png'):
        job['reference'].predict(f's3://{BUCKET}/images/missing.png')


def test_s3_catalog_resume_and_commit(s3, job):
    from numclip_mm.batch.pipeline import prepare, score_catalog
    fs = s3['fs']
    out = f's3://{BUCKET}/scored'
    # a first run that only got through p0 (input: one file)
    first = score_catalog(_opts(job, input=f's3://{BUCKET}/catalog/p0.parquet', output=out))
    assert first['files_written'] == 1
    # a writer killed while uploading p1: its multipart upload (one 5 MiB part sent) never completes
    dead = fs.open(f'{BUCKET}/scored/p1.parquet', 'wb', autocommit=False, block_size=5 * 2 ** 20)
    dead.write(b'\0' * (6 * 2 ** 20))
    dead.flush()
    assert dead.parts  # a part really was uploaded
    fs.invalidate_cache()
    assert not fs.exists(f'{BUCKET}/scored/p1.parquet')  # ... and nothing is visible under the final key
    plans = prepare(_opts(job, input=f's3://{BUCKET}/catalog/', output=out)).plans
    assert [p.status for p in plans] == ['complete', 'todo']
    assert 'etag' in plans[0].identity
    second = score_catalog(_opts(job, input=f's3://{BUCKET}/catalog/', output=out))
    assert [f['status'] for f in second['files']] == ['skipped', 'written']
    for name, cells in job['images'].items():
        table = _read(fs, f'{BUCKET}/scored/{name}')
        assert table.num_rows == 8 and table.column('id').to_pylist() == list(range(8))
        errors = table.column('count_error').to_pylist()
        assert errors[-1] is not None and all(e is None for e in errors[:-1])
        want = job['reference'].predict(cells[:-1])
        np.testing.assert_allclose(table.column('count_value').to_pylist()[:-1], want['value'], atol=1e-5)
    # a torn or foreign object under an output key is not trusted: re-scored
    fs.pipe_file(f'{BUCKET}/scored/p0.parquet', b'PAR1 torn')
    fs.invalidate_cache()
    plans = prepare(_opts(job, input=f's3://{BUCKET}/catalog/', output=out)).plans
    assert plans[0].status == 'stale: unreadable footer' and plans[1].status == 'complete'
    dead.discard()


def test_s3_failed_write_leaves_no_object(s3, job):
    """A write that fails half-way (here: the input's rows do not match the predictions) aborts its upload."""
    from numclip_mm.batch import catalog
    from numclip_mm.batch.columns import PREDICTION_SCHEMA, output_columns
    fs = s3['fs']
    plan = catalog.plan_job(f's3://{BUCKET}/catalog/p1.parquet', f's3://{BUCKET}/failed', image_column='image',
                            path_column=None, new_columns=output_columns('count_'), model={}).plans[0]

    def mismatch(col, part, first):
        raise RuntimeError('changed while it was scored')
    preds = PREDICTION_SCHEMA.empty_table()
    with pytest.raises(RuntimeError, match='changed'):
        catalog.write_scored_file(plan, preds, output_columns('count_'), 'image', {}, mismatch)
    fs.invalidate_cache()
    assert not fs.exists(f'{BUCKET}/failed/p1.parquet')


@pytest.mark.parametrize('engine', ['ray', 'in-process'])
def test_s3_path_column_images(s3, job, engine):
    """A catalog on S3 whose cells are s3:// image paths, scored into S3, by Ray's actors and by the in-process
    threads (each reading the catalog, the images and writing the output through s3fs from threads of the driver)."""
    from numclip_mm.batch.pipeline import score_catalog
    fs = s3['fs']
    on = {} if engine == 'ray' else dict(num_actors=None, engine='in-process')
    report = score_catalog(_opts(job, input=f's3://{BUCKET}/paths/', output=f's3://{BUCKET}/scored-paths-{engine}',
                                 image_column=None, path_column='path', **on))
    assert report['rows_scored'] == 4 and report['engine']['name'] == engine
    table = _read(fs, f'{BUCKET}/scored-paths-{engine}/paths.parquet')
    errors = table.column('count_error').to_pylist()
    assert errors[:3] == [None] * 3 and 'not found' in errors[3]
    want = job['reference'].predict(job['images']['p0.parquet'][:3])
    np.testing.assert_allclose(table.column('count_value').to_pylist()[:3], want['value'], atol=1e-5)


def test_s3_killed_run_then_one_rerun(s3, job, tmp_path):
    """Kill the whole scoring process group (driver and its Ray) as soon as its first output object appears: every
    object under the output prefix is then a complete output (no torn object), and one re-run of the same command
    completes the rest: rows out == rows in. The killed run is the CLI in a shell that exports only what
    docs/batch_scoring.md says (no FSSPEC_* variable, no AWS config files): its local Ray workers inherit it."""
    import subprocess
    import sys
    import time
    from pathlib import Path
    fs = s3['fs']
    rng = np.random.default_rng(9)
    rows = 100  # per file, in row groups of 25 and batches of 8: the first output comes while most files wait
    for f in range(6):
        cells = [_png(rng, 24, 24) for _ in range(rows)]
        buf = io.BytesIO()
        pq.write_table(pa.table({'id': range(rows), 'image': pa.array(cells, pa.binary())}), buf, row_group_size=25)
        fs.pipe_file(f'{BUCKET}/big/p{f}.parquet', buf.getvalue())
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, '-m', 'numclip_mm.batch.score', '--config', job['cfg'], '--checkpoint', job['ckpt'],
           '--input',
           f's3://{BUCKET}/big/', '--output', f's3://{BUCKET}/big-scored/', '--num-cpus', '2', '--batch-size', '8',
           '--num-actors', '1', '--no-head-start']  # the local kill test runs the default sizing
    # (one actor, front to back: the driver's head start scored files from the back meanwhile, and once all six
    # outputs were committed before the kill landed: test_batch_cli's stopped-driver test has the same guard)
    home = tmp_path / 'home'
    home.mkdir()
    env = dict(PATH=os.environ['PATH'], HOME=str(home), PYTHONPATH=str(repo), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER='0',
               **documented_s3_environment(s3['endpoint']))
    mark = uuid.uuid4().hex
    first = subprocess.Popen(cmd, cwd=repo, env=dict(env, **{RUN_MARK: mark}), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 150
        while True:
            fs.invalidate_cache()
            if fs.exists(f'{BUCKET}/big-scored') and fs.ls(f'{BUCKET}/big-scored'):
                break
            assert first.poll() is None and time.time() < deadline, 'no output appeared before the run ended'
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started (its process group)
        first.wait(timeout=30)
    # Ray workers run in their own process groups: one already writing may still commit its (complete) output
    # before it notices its raylet is gone. Once every process of the run is gone the listing is final
    wait_until_gone(mark)
    fs.invalidate_cache()
    done = sorted(fs.ls(f'{BUCKET}/big-scored', detail=False))
    assert 0 < len(done) < 6, done
    for key in done:  # whatever the kill interrupted, no object is partial
        assert _read(fs, key).num_rows == rows
    # the re-run is the same command line through the CLI's own entry, in this process (its Ray, started with this
    # module's environment): the documented environment was proven by the first run, which read the catalog and the
    # checkpoint and wrote outputs with it; what the re-run checks is resuming from the object listing
    from numclip_mm.batch.score import main as cli_main
    assert cli_main(cmd[3:] + ['--summary-json', str(tmp_path / 's.json')]) == 0
    import json
    summary = json.loads((tmp_path / 's.json').read_text())
    assert summary['files_skipped'] == len(done) and summary['files_written'] == 6 - len(done)
    task = job['reference'].task
    for f in range(6):
        table = _read(fs, f'{BUCKET}/big-scored/p{f}.parquet')
        assert table.num_rows == rows and table.column('count_error').null_count == rows
        value, label = table.column('count_value').to_pylist(), table.column('count_label').to_pylist()
        assert label == [task.concepts[b] for b in task.value_to_bin(value)]  # every label is its value's bin


def documented_s3_environment(endpoint):
    """The variables docs/batch_scoring.md ("Object stores and credentials") tells a user to export, with this test's
    endpoint and moto's fake credentials as their values."""
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / 'docs' / 'batch_scoring.md').read_text()
    found = re.search(r'<!-- recipe: object store environment[^>]*-->\s*```bash\n(.*?)```', text, re.S)
    assert found, 'docs/batch_scoring.md lost its object store environment block'
    names = re.findall(r'^export (\w+)=', found.group(1), re.M)
    values = dict(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID='testing', AWS_SECRET_ACCESS_KEY='testing')
    assert set(names) == set(values), names
    return values

