"""Catalogs as other tools write them, and several models in one pass.

Every catalog here is written by the real writer a data team would use: pyarrow (binary, large_binary,
binary_view), polars, and Hugging Face ``datasets`` (``Image()`` feature: ``struct<bytes, path>``, with rows whose
bytes are null and whose path is the fallback). Checked: rows out == rows in, input columns kept exactly, the
predictions of each layout equal to the Predictor's on the same image bytes, Hive partition folders kept in the
output, Spark's bookkeeping files ignored and any other unscored file reported; several models in one pass equal to
one model per run; embeddings equal (cosine 1 within fp16) to the Predictor's features; adding a model re-scores.

One Ray instance (2 CPUs, loopback) for the module; every test has a SIGALRM timeout (conftest).
"""
import contextlib
import gc
import io
import json
import logging
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import collector_states, write_tiny_config
from PIL import Image

from numclip_mm.batch import catalog
from numclip_mm.batch.columns import BYTES, PATH, STRUCT, cell_crcs
from numclip_mm.batch.decode import CellDecoder, group_preprocessors
from numclip_mm.batch.pipeline import ModelSpec, ScoreOptions, prepare, score_catalog
from numclip_mm.batch.score import main as cli_main
from numclip_mm.inference import ImagePreprocessor, Predictor

TEST_TIMEOUT_S = 240  # per test (conftest's module_timeout)
PREDICTIONS = ('value', 'label', 'probability', 'bin_argmax', 'bin_argmax_probability', 'error')


def _png(rng, h, w):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format='PNG')
    return buf.getvalue()


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    """Two tiny models (tasks count and adience, so default prefixes differ), images on disk, and a Hive-partitioned
    catalog whose four partitions hold the same kind of cells in four byte layouts from two writers."""
    import polars as pl
    root = tmp_path_factory.mktemp('catalogs')
    models = {}
    for seed, task in ((1, 'count'), (2, 'adience')):
        cfg = write_tiny_config(root / f'{task}.py', task=task)
        torch.manual_seed(seed)
        ckpt = root / f'{task}.pth'
        torch.save({'state_dict': Predictor(cfg).model.state_dict(), 'meta': {}}, ckpt)
        models[task] = dict(cfg=cfg, ckpt=str(ckpt), predictor=Predictor(cfg, str(ckpt)))
    rng = np.random.default_rng(0)
    images = root / 'images'
    images.mkdir()
    for i in range(4):
        (images / f'img{i}.png').write_bytes(_png(rng, 20 + 3 * i, 30 - i))

    hive = root / 'hive'
    cells = {}  # relative path -> image cells (None: null, b'broken': undecodable)
    writers = {'year=2020/part-0.parquet': pa.binary(), 'year=2021/part-0.parquet': pa.large_binary(),
               'year=2022/part-0.parquet': pa.binary_view(), 'year=2023/part-0.parquet': 'polars'}
    ids = 0
    for rel, how in writers.items():
        path = hive / rel
        path.parent.mkdir(parents=True)
        cell = [_png(rng, int(rng.integers(16, 48)), int(rng.integers(16, 48))) for _ in range(5)]
        cell[2] = b'broken'
        cells[rel] = cell
        rows = dict(id=list(range(ids, ids + 5)), image=cell, note=[f'row {i}' for i in range(5)])
        ids += 5
        if how == 'polars':
            pl.DataFrame(rows).write_parquet(path, row_group_size=2)
        else:
            pq.write_table(pa.table(dict(rows, image=pa.array(cell, how))), path, row_group_size=2)
    # what Spark leaves beside its partitions, and a file nobody should score silently
    (hive / '_SUCCESS').write_text('')
    (hive / '_committed_8123').write_text('{}')
    (hive / 'year=2020' / '.part-0.parquet.crc').write_bytes(b'crc')
    (hive / '_temporary' / '0').mkdir(parents=True)
    (hive / '_temporary' / '0' / 'part-9.parquet').write_bytes(b'half written')
    (hive / 'year=2021' / 'notes.txt').write_text('not a catalog file')
    return dict(root=root, models=models, images=images, hive=hive, cells=cells)


def _model_args(env, *tasks):
    args = []
    for task in tasks:
        args += ['--model', env['models'][task]['cfg'], env['models'][task]['ckpt']]
    return args


def _check_predictions(table, prefix, predictor, cells, atol=1e-5):
    """Errors on exactly the undecodable/null cells; the Predictor's predictions on the others."""
    good = [i for i, c in enumerate(cells) if c is not None and c != b'broken']
    errors = table.column(f'{prefix}error').to_pylist()
    assert [e is None for e in errors] == [i in good for i in range(len(cells))], errors
    want = predictor.predict([cells[i] for i in good])
    value = table.column(f'{prefix}value').to_pylist()
    np.testing.assert_allclose([value[i] for i in good], want['value'], atol=atol, rtol=0)
    prob = table.column(f'{prefix}probability').to_pylist()
    np.testing.assert_allclose([prob[i] for i in good], want['probability'], atol=atol, rtol=0)
    label = table.column(f'{prefix}label').to_pylist()
    assert [label[i] for i in good] == list(want['label'])
    top = table.column(f'{prefix}bin_argmax').to_pylist()
    assert [top[i] for i in good] == list(want['bin_argmax'])
    return good


@pytest.fixture(scope='module')
def partitioned(env, ray_session, tmp_path_factory):
    """The Hive-partitioned catalog scored with one model from the command line, as a user would (as the console
    command runs it: the garbage collector paused through start-up; its state is recorded on the way)."""
    out = tmp_path_factory.mktemp('partitioned') / 'out'
    summary = out.parent / 'summary.json'
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger('numclip_mm.batch')
    logger.addHandler(handler)
    with collector_states('_score') as collector:
        collector['before'] = gc.get_freeze_count()  # conftest froze what the test session had imported
        try:
            code = cli_main(['--config', env['models']['count']['cfg'], '--checkpoint',
                             env['models']['count']['ckpt'], '--input', str(env['hive']), '--output', str(out),
                             '--batch-size', '3', '--summary-json', str(summary)], pause_gc=True)
        finally:
            collector['after'] = gc.isenabled(), gc.get_freeze_count()
            gc.enable()
            logger.removeHandler(handler)
    assert code == 0
    return dict(out=out, summary=json.loads(summary.read_text()), lines=[r.getMessage() for r in records],
                collector=collector)


def test_command_pauses_the_collector_through_start_up(partitioned):
    """The console command (score.cli -> main(pause_gc=True)) collects nothing while start-up creates its
    long-lived objects, freezes them once Ray is up and collects again while scoring; at the end everything is
    frozen (the interpreter's exit then has nothing to walk)."""
    collector = partitioned['collector']
    assert collector['planning'] is False
    enabled, frozen = collector['scoring']
    assert enabled and frozen > collector['before']  # what start-up made since is frozen too
    enabled, frozen_at_exit = collector['after']
    assert enabled and frozen_at_exit > frozen  # and what the job made, at its end


def test_partitioned_catalog_in_every_binary_layout(env, partitioned):
    """binary, large_binary, binary_view (pyarrow) and polars' layout in one Hive-partitioned job: every partition
    folder kept in the output, Spark's files ignored, the stray file reported, predictions as on plain bytes."""
    out, summary = partitioned['out'], partitioned['summary']
    written = sorted(str(p.relative_to(out)) for p in out.rglob('*') if p.is_file())
    assert written == sorted(env['cells'])  # same relative paths; nothing for _SUCCESS, .crc, _temporary/
    types = {rel: pq.read_schema(env['hive'] / rel).field('image').type for rel in env['cells']}
    assert set(map(str, types.values())) >= {'binary', 'large_binary', 'binary_view'}, types
    for rel, cells in env['cells'].items():
        src, got = pq.read_table(env['hive'] / rel), pq.read_table(out / rel)
        assert got.num_rows == src.num_rows == len(cells)
        for name in src.schema.names:
            assert got.column(name).equals(src.column(name)), (rel, name)
        _check_predictions(got, 'count_', env['models']['count']['predictor'], cells)
        assert 'cannot decode' in got.column('count_error')[2].as_py()
    assert summary['files_written'] == 4 and summary['rows_scored'] == 20
    notes = str(env['hive'] / 'year=2021' / 'notes.txt')
    assert len(summary['unscored_files']) == 1 and summary['unscored_files'][0].startswith(notes)
    assert summary['ignored_files'] == 4  # _SUCCESS, _committed_8123, .part-0.parquet.crc, _temporary/
    assert summary['image_column'] == dict(column='image', kind=BYTES, reason="the column named 'image'")
    lines = partitioned['lines']
    assert any(line.startswith('1 files in the input are not scored') and notes in line for line in lines)
    assert any("image column 'image'" in line for line in lines)
    # a partition-aware reader sees the partition values in the output folder, as in the input folder
    years = pq.read_table(out, partitioning='hive').column('year').to_pylist()
    assert sorted(set(years)) == [2020, 2021, 2022, 2023] and len(years) == 20


@pytest.mark.parametrize('engine', ['ray', 'in-process'])
def test_adding_a_model_rescores_the_file_with_both(env, partitioned, tmp_path, engine):
    """Two models in one pass (+ --embedding) into the folder the one-model run filled, on Ray's actors and on the
    in-process threads: every file is re-scored (the set of models changed), the first model's columns equal the
    one-model run's, the second's the Predictor's, and the embeddings the Predictor's features (cosine 1 within
    fp16)."""
    out = tmp_path / 'out'
    shutil.copytree(partitioned['out'], out)
    models = [ModelSpec(env['models']['count']['cfg'], env['models']['count']['ckpt']),
              ModelSpec(env['models']['adience']['cfg'], env['models']['adience']['ckpt'])]
    opts = dict(models=models, input=str(env['hive']), output=str(out), batch_size=3, embedding=True,
                **(dict(num_actors=1) if engine == 'ray' else dict(engine='in-process')))  # (one actor: 20 rows)
    plans = prepare(ScoreOptions(**opts)).plans
    assert {p.status for p in plans} == {"stale: models changed (added: 'adience_')"}
    report = score_catalog(ScoreOptions(**opts))
    assert report['engine']['name'] == engine
    assert report['files_written'] == 4 and 're-scores the whole file' in report['resume']
    assert [m['prefix'] for m in report['models']] == ['count_', 'adience_']
    adience = env['models']['adience']['predictor']
    for rel, cells in env['cells'].items():
        one, both = pq.read_table(partitioned['out'] / rel), pq.read_table(out / rel)
        per_model = ['value', 'label', 'probability', 'bin_argmax', 'bin_argmax_probability', 'error']
        assert both.column_names == one.column_names[:-len(per_model)] + [
            f'{prefix}{suffix}' for prefix in ('count_', 'adience_') for suffix in (*per_model, 'embedding')]
        for suffix in PREDICTIONS:  # the same model in a several-model pass gives the one-model run's columns
            a, b = one.column(f'count_{suffix}').to_pylist(), both.column(f'count_{suffix}').to_pylist()
            if suffix in ('value', 'probability', 'bin_argmax_probability'):
                np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), atol=1e-6)
            else:
                assert a == b
        good = _check_predictions(both, 'adience_', adience, cells)
        for prefix, task in (('count_', 'count'), ('adience_', 'adience')):
            column = both.column(f'{prefix}embedding')
            assert column.type == pa.list_(pa.float16())
            assert [column[i].as_py() is None for i in range(len(cells))] == [i not in good for i in range(5)]
            written = np.array([column[i].as_py() for i in good], dtype=np.float32)
            features = env['models'][task]['predictor'].features([cells[i] for i in good])
            assert written.shape == features.shape
            np.testing.assert_allclose(np.linalg.norm(written, axis=1), 1, atol=2e-3)
            cosine = (written * features).sum(1) / np.linalg.norm(written, axis=1)
            np.testing.assert_allclose(cosine, 1, atol=1e-3)
    meta = pq.read_metadata(out / rel).row_group(0)  # unique values get no dictionary to hash them into
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    assert 'RLE_DICTIONARY' not in encodings['count_embedding.list.element']
    assert 'RLE_DICTIONARY' in encodings['adience_label']
    # the same two models again: nothing to do; one of them alone: the outputs are stale again
    assert all(p.complete for p in prepare(ScoreOptions(**opts)).plans)
    alone = prepare(ScoreOptions(**dict(opts, models=models[:1]))).plans
    assert {p.status for p in alone} == {"stale: models changed (removed: 'adience_')"}


def test_hugging_face_image_struct_with_path_fallback(env, ray_session, tmp_path):
    """A `datasets` export (Image() feature): rows with bytes, rows whose bytes are null and whose path is read
    instead (absolute, and relative to --path-root), a null image and an undecodable one; two models, decoded in
    separate tasks (the GPU layout). Predictions equal the Predictor's on the same image bytes."""
    import datasets
    rng = np.random.default_rng(5)
    inline = [_png(rng, 24, 20 + i) for i in range(3)]
    rows = [{'bytes': inline[0], 'path': 'a.png'}, str(env['images'] / 'img0.png'), None,
            {'bytes': inline[1], 'path': None}, {'bytes': b'broken', 'path': 'x.png'}, 'img1.png',
            {'bytes': inline[2], 'path': str(env['images'] / 'img2.png')}]
    ds = datasets.Dataset.from_dict({'id': list(range(len(rows))), 'image': rows},
                                    features=datasets.Features({'id': datasets.Value('int64'),
                                                                'image': datasets.Image()}))
    cat = tmp_path / 'hf'
    cat.mkdir()
    with contextlib.chdir(env['images']):  # datasets sizes the relative path's file while writing
        ds.to_parquet(str(cat / 'train.parquet'))
    src = pq.read_table(cat / 'train.parquet')
    assert src.schema.field('image').type == pa.struct([('bytes', pa.binary()), ('path', pa.string())])
    structs = src.column('image').to_pylist()
    assert structs[0] == {'bytes': inline[0], 'path': 'a.png'}  # bytes win: a.png does not exist
    assert structs[1] == {'bytes': None, 'path': str(env['images'] / 'img0.png')}  # datasets kept the path only
    assert structs[5] == {'bytes': None, 'path': 'img1.png'} and structs[2] is None
    assert structs[6]['bytes'] is None  # datasets keeps a path to an existing file instead of the bytes
    cells = [inline[0], (env['images'] / 'img0.png').read_bytes(), None, inline[1], b'broken',
             (env['images'] / 'img1.png').read_bytes(), (env['images'] / 'img2.png').read_bytes()]
    out = tmp_path / 'out'
    code = cli_main(_model_args(env, 'count', 'adience') + [
        '--input', str(cat), '--output', str(out), '--path-root', str(env['images']), '--decode-in', 'tasks',
        '--batch-size', '4', '--summary-json', str(tmp_path / 's.json')])
    assert code == 0
    summary = json.loads((tmp_path / 's.json').read_text())
    assert summary['image_column'] == dict(column='image', kind=STRUCT, reason="the column named 'image'")
    got = pq.read_table(out / 'train.parquet')
    assert got.num_rows == len(rows) and got.column('image').equals(src.column('image'))
    assert got.schema.metadata[b'huggingface'] == src.schema.metadata[b'huggingface']  # still a datasets export
    meta = pq.read_metadata(out / 'train.parquet').row_group(0)
    assert 'RLE_DICTIONARY' not in [meta.column(i).encodings for i in range(meta.num_columns)
                                    if meta.column(i).path_in_schema == 'image.bytes'][0]
    _check_predictions(got, 'count_', env['models']['count']['predictor'], cells)
    _check_predictions(got, 'adience_', env['models']['adience']['predictor'], cells)
    assert got.column('count_error')[2].as_py() == 'null image'
    assert 'cannot decode' in got.column('adience_error')[4].as_py()


def test_image_column_choice_and_refusals(env, tmp_path, capsys):
    """Catalogs written by polars, pyarrow and datasets: the image column chosen when unambiguous (and why), asked
    for otherwise; list and other nested columns refused naming the column and its type."""
    import datasets
    import polars as pl
    png = (env['images'] / 'img0.png').read_bytes()

    def schema(name, write):
        path = tmp_path / f'{name}.parquet'
        write(str(path))
        return pq.read_schema(path), str(path)

    choose = catalog.choose_image_source
    s, where = schema('pl', lambda p: pl.DataFrame({'image': [png], 'path': ['x.png']}).write_parquet(p))
    assert choose(s, where) == catalog.ImageSource('image', BYTES, "the column named 'image'")
    assert choose(s, where, path_column='path').kind == PATH
    s, where = schema('photo', lambda p: pq.write_table(pa.table({'id': [1], 'photo': pa.array([png])}), p))
    assert choose(s, where) == catalog.ImageSource('photo', BYTES, 'the only binary column')
    hf = datasets.Dataset.from_dict({'img': [{'bytes': png, 'path': None}], 'thumb': [png]},
                                    features=datasets.Features({'img': datasets.Image(),
                                                                'thumb': datasets.Value('binary')}))
    s, where = schema('hf', hf.to_parquet)
    assert choose(s, where).column == 'img' and choose(s, where).kind == STRUCT  # the struct over loose bytes
    assert choose(s, where, image_column='thumb').kind == BYTES
    s, where = schema('paths', lambda p: pl.DataFrame({'id': [1], 'path': ['x.png']}).write_parquet(p))
    assert choose(s, where) == catalog.ImageSource('path', PATH, 'the only path-like string column (no image bytes '
                                                                 'in the catalog)')
    with pytest.raises(catalog.ScoringSetupError, match=r"for file paths use --path-column"):
        choose(s, where, image_column='path')
    s, where = schema('two', lambda p: pq.write_table(pa.table({'a': pa.array([png]), 'b': pa.array([png])}), p))
    with pytest.raises(catalog.ScoringSetupError, match=r"several possible image columns \['a', 'b'\]"):
        choose(s, where)
    # a list of images per row, as `datasets` writes Sequence(binary): refused up front by the command line
    seq = datasets.Dataset.from_dict({'image': [[png, png]]},
                                     features=datasets.Features({'image': datasets.Sequence(datasets.Value('binary'))}))
    cat = tmp_path / 'lists'
    cat.mkdir()
    seq.to_parquet(str(cat / 'l.parquet'))
    code = cli_main(_model_args(env, 'count') + ['--input', str(cat), '--output', str(tmp_path / 'o')])
    err = capsys.readouterr().err
    assert code == 2 and "image column 'image'" in err and 'list<element: binary>' in err, err
    assert 'nested or list column' in err and not (tmp_path / 'o').exists()
    with pytest.raises(catalog.ScoringSetupError, match=r"image column 'image' .* is list<element: binary>"):
        choose(pq.read_schema(cat / 'l.parquet'), 'l', image_column='image')


def test_model_flags(env, tmp_path):
    """--model CONFIG CHECKPOINT [PREFIX] is repeatable; mixing it with the one-model flags, a wrong count of
    values, or two models writing the same columns are refused before any work."""
    base = ['--input', str(env['hive']), '--output', str(tmp_path / 'o')]
    for wrong in (['--model', env['models']['count']['cfg']],
                  _model_args(env, 'count') + ['--checkpoint', env['models']['count']['ckpt']],
                  ['--checkpoint', env['models']['count']['ckpt']]):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(wrong + base)
        assert exit_info.value.code == 2
    same = [ModelSpec(env['models']['count']['cfg'], env['models']['count']['ckpt'])] * 2
    with pytest.raises(catalog.ScoringSetupError, match='give each --model its own PREFIX'):
        prepare(ScoreOptions(models=same, input=str(env['hive']), output=str(tmp_path / 'o')))
    job = prepare(ScoreOptions(models=[same[0], ModelSpec(same[1].config, same[1].checkpoint, 'b_')],
                               input=str(env['hive']), output=str(tmp_path / 'o')))
    assert [m.prefix for m in job.models] == ['count_', 'b_'] and not (tmp_path / 'o').exists()


def test_one_decode_per_distinct_model_input(env):
    """Models sharing an input size and pipeline share one decode; another size gets its own, from the same pixels."""
    cfg = env['models']['count']['cfg']
    a, b, c = ImagePreprocessor(cfg, (32, 32)), ImagePreprocessor(cfg, (32, 32)), ImagePreprocessor(cfg, (48, 40))
    unique, index = group_preprocessors([a, b, c])
    assert unique == [a, c] and index == [0, 0, 1]
    png = (env['images'] / 'img3.png').read_bytes()
    tensors, error = CellDecoder(unique, BYTES)(png)
    assert error is None and [t.shape for t in tensors] == [(3, 32, 32), (3, 48, 40)]
    for tensor, pre in zip(tensors, unique):
        np.testing.assert_array_equal(tensor, pre.from_bytes(png).numpy())


def test_struct_cell_crcs_follow_what_was_read():
    """A Hugging Face image cell is fingerprinted by its bytes (as the same bytes in a binary column), by its path
    where bytes are null (never equal to bytes spelling the same text), -1 when neither; slices keep their rows."""
    kind = pa.struct([('bytes', pa.binary()), ('path', pa.string())])
    cells = pa.array([{'bytes': b'abc', 'path': 'p'}, {'bytes': None, 'path': 'abc'}, None,
                      {'bytes': None, 'path': None}, {'bytes': b'xyz', 'path': None}], kind)
    crcs = cell_crcs(cells)
    plain = cell_crcs(pa.array([b'abc', b'xyz']))
    assert crcs[0] == plain[0] and crcs[4] == plain[1]
    assert crcs[1] >= 0 and crcs[1] != plain[0] and list(crcs[2:4]) == [-1, -1]
    np.testing.assert_array_equal(cell_crcs(cells.slice(1, 3)), crcs[1:4])
    np.testing.assert_array_equal(cell_crcs(pa.chunked_array([cells.slice(0, 2), cells.slice(2)])), crcs)
    views = pa.array([b'abc', None, b'xyz'], pa.binary_view())
    assert list(cell_crcs(views)) == [plain[0], -1, plain[1]]


def test_globs_keep_partitions_and_the_output_folder_is_never_input(env, tmp_path):
    """A glob keeps the path relative to its folder before the first wildcard (the partition value stays); folders
    a glob matches are walked; an output folder inside the input folder is not read as input."""
    hive = env['hive']
    listing = catalog.list_inputs(str(hive / 'year=202[01]' / '*.parquet'))
    assert listing.relative == ['year=2020/part-0.parquet', 'year=2021/part-0.parquet']
    listing = catalog.list_inputs(str(hive / 'year=*'))
    assert listing.relative == sorted(env['cells']) and len(listing.unscored) == 1  # notes.txt
    assert listing.ignored == 1  # year=2020/.part-0.parquet.crc
    cat = tmp_path / 'cat'
    shutil.copytree(hive / 'year=2020', cat)
    (cat / 'scored' / 'x').mkdir(parents=True)
    pq.write_table(pa.table({'image': pa.array([b'']), 'count_value': [1.0]}), cat / 'scored' / 'x' / 'p.parquet')
    listing = catalog.list_inputs(str(cat), output=str(cat / 'scored'))
    assert listing.relative == ['part-0.parquet'] and listing.ignored == 2  # the .crc file and the output folder
