"""The in-process engine (numclip_mm.batch.in_process) and the choice between it and Ray (numclip_mm.batch.engine),
without Ray: a stand-in actor yields one small table per batch. Whole jobs on it: the end of this module, and every
command-line test that names no cluster (test_batch_cli)."""
import json
import sys
import threading
import time
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from numclip_mm.batch import engine as engine_mod
from numclip_mm.batch.catalog import ScoringSetupError
from numclip_mm.batch.engine import IN_PROCESS_MAX_CPUS, choose_engine, gpus_visible
from numclip_mm.batch.in_process import InProcessScorer, ItemFailed
from numclip_mm.batch.pipeline import ScoreOptions


# ---------------------------------------------------------------------------------------------- the engine choice
@pytest.fixture
def small_machine(monkeypatch):
    """2 CPUs, no GPU, no RAY_ADDRESS, no recorded `ray start` cluster, Ray not running in this process."""
    import ray._private.services as services
    monkeypatch.setattr(engine_mod, 'machine_cpus', lambda: 2)
    monkeypatch.setattr(engine_mod, 'gpus_visible', lambda: False)
    monkeypatch.setattr(engine_mod, '_ray_running_here', lambda: False)
    monkeypatch.delenv('RAY_ADDRESS', raising=False)
    monkeypatch.setattr(services, 'find_bootstrap_address', lambda temp_dir: None)
    return monkeypatch


def _opts(**kw):
    return ScoreOptions(input='in', output='out', config='c.py', checkpoint='c.pth', **kw)


def test_auto_scores_in_process_on_a_small_machine_alone(small_machine):
    chosen = choose_engine(_opts())
    assert (chosen.name, chosen.cpus) == ('in-process', 2)
    assert 'no Ray cluster named, no GPU, 2 CPU(s)' in chosen.reason and '--engine ray' in chosen.reason
    assert choose_engine(_opts(num_cpus=5)).cpus == 5  # --num-cpus sizes the threads
    small_machine.setitem(sys.modules, 'ray._private.services', None)  # Ray not installed: no cluster recorded
    assert choose_engine(_opts()).name == 'in-process'
    assert choose_engine(_opts(address='auto')).name == 'ray'  # (Ray's path then says it is missing)


@pytest.mark.parametrize('change, reason', [
    (dict(address='10.0.0.1:6379'), '--address (10.0.0.1:6379)'),
    (dict(env='10.0.0.2:6379'), 'RAY_ADDRESS (10.0.0.2:6379)'),
    (dict(recorded='127.0.0.1:6380'), 'recorded by an earlier `ray start` on this machine (127.0.0.1:6380)'),
    (dict(address='local'), '--address local'),
    (dict(env='local'), 'RAY_ADDRESS=local'),
    (dict(running=True), 'Ray already runs in this process'),
    (dict(num_actors=2), '--num-actors given'),
    (dict(decode_in_actor=False), '--decode-in given'),
    (dict(num_gpus_per_actor=1.0), '--num-gpus-per-actor given'),
    (dict(actor_class=object), 'a custom actor class given'),
    (dict(gpu=True), 'this machine has a GPU'),
    (dict(cpus=IN_PROCESS_MAX_CPUS + 1), f'{IN_PROCESS_MAX_CPUS + 1} CPUs'),
])
def test_auto_takes_ray_for_a_cluster_a_gpu_ray_options_or_many_cores(small_machine, change, reason):
    import ray._private.services as services
    change = dict(change)
    if 'env' in change:
        small_machine.setenv('RAY_ADDRESS', change.pop('env'))
    if 'recorded' in change:
        recorded = change.pop('recorded')
        small_machine.setattr(services, 'find_bootstrap_address', lambda temp_dir: recorded)
    if change.pop('running', False):
        small_machine.setattr(engine_mod, '_ray_running_here', lambda: True)
    if change.pop('gpu', False):
        small_machine.setattr(engine_mod, 'gpus_visible', lambda: True)
    if 'cpus' in change:
        cpus = change.pop('cpus')
        small_machine.setattr(engine_mod, 'machine_cpus', lambda: cpus)
    actor_class = change.pop('actor_class', None)
    chosen = choose_engine(_opts(**change), actor_class)
    assert chosen.name == 'ray' and reason in chosen.reason, chosen


def test_an_engine_asked_for_is_kept_or_refused_with_the_reason(small_machine):
    assert choose_engine(_opts(engine='ray')).name == 'ray'
    small_machine.setattr(engine_mod, 'machine_cpus', lambda: 64)
    assert choose_engine(_opts(engine='in-process')).cpus == 64
    with pytest.raises(ScoringSetupError, match=r'--engine in-process .*--address 10.0.0.1:6379.*need Ray'):
        choose_engine(_opts(engine='in-process', address='10.0.0.1:6379'))
    with pytest.raises(ScoringSetupError, match=r'--num-actors, a custom actor class need Ray'):
        choose_engine(_opts(engine='in-process', num_actors=2), actor_class=object)
    with pytest.raises(ScoringSetupError, match="--engine must be one of auto, in-process, ray, got 'fast'"):
        choose_engine(_opts(engine='fast'))


def test_ray_running_here_is_read_without_importing_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, 'ray', types.SimpleNamespace(is_initialized=lambda: True))
    assert engine_mod._ray_running_here()
    monkeypatch.setitem(sys.modules, 'ray', types.SimpleNamespace(is_initialized=lambda: False))
    assert not engine_mod._ray_running_here()
    monkeypatch.delitem(sys.modules, 'ray')
    assert not engine_mod._ray_running_here() and 'ray' not in sys.modules


def test_gpus_hidden_by_cuda_visible_devices_do_not_count(monkeypatch):
    monkeypatch.setattr(engine_mod.glob, 'glob', lambda pattern: ['/dev/nvidia0'])
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    assert gpus_visible()
    for hidden in ('', '-1'):
        monkeypatch.setenv('CUDA_VISIBLE_DEVICES', hidden)
        assert not gpus_visible()
    monkeypatch.setattr(engine_mod.glob, 'glob', lambda pattern: [])
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '0')
    assert not gpus_visible()


# ---------------------------------------------------------------------------------------------- the scorer threads
def _items(files=3, groups=4):
    return [dict(file=f, path=f'f{f}', row_group=g, offset=0, start=0, stop=2) for f in range(files)
            for g in range(groups)]


class StandIn:
    """An InferenceActor stand-in: one 2-row table per item (file index, row group as the row); raises on the
    items whose (file, row group) is in ``fail``; records the threads it ran on."""

    def __init__(self, fail=(), seen=None, delay=0.0):
        self.fail, self.seen, self.delay = set(fail), seen if seen is not None else [], delay

    def __call__(self, batch):
        f, g = int(batch['file'][0]), int(batch['row_group'][0])
        self.seen.append(threading.current_thread().name)
        if (f, g) in self.fail:
            raise OSError(f'row group {g} of file {f} is unreadable')
        time.sleep(self.delay)
        yield pa.table(dict(file=[f, f], row=[2 * g, 2 * g + 1]))


def test_every_item_is_scored_once_by_the_threads_and_delivered_on_the_callers_thread():
    seen, delivered, on = [], [], set()

    def deliver(table):
        on.add(threading.current_thread().name)
        delivered.extend(zip(table['file'].to_pylist(), table['row'].to_pylist()))
    scorer = InProcessScorer(lambda: StandIn(seen=seen, delay=0.002), _items(), threads=3)
    scorer.run(deliver, failed=pytest.fail)
    assert sorted(delivered) == [(f, r) for f in range(3) for r in range(8)]
    assert on == {threading.current_thread().name}  # (so a signal handler and delivery share one thread)
    assert set(seen) == {'numclip-score-0', 'numclip-score-1', 'numclip-score-2'}  # all three took work
    assert scorer.scored_items == 12 and scorer.first_output is not None
    assert not [t for t in threading.enumerate() if t.name.startswith('numclip-score-')]


def test_an_item_that_fails_fails_its_file_and_its_other_items_are_skipped():
    seen, failures, delivered = [], [], []
    scorer = InProcessScorer(lambda: StandIn(fail={(1, 0)}, seen=seen), _items(), threads=1)
    scorer.run(lambda t: delivered.extend(t['file'].to_pylist()), failures.append)
    assert [(f.file_index, str(f)) for f in failures] == [(1, 'OSError: row group 0 of file 1 is unreadable')]
    assert isinstance(failures[0], ItemFailed) and isinstance(failures[0].error, OSError)
    assert sorted(set(delivered)) == [0, 2] and len(seen) == 4 + 1 + 4  # file 1's three other items never ran


def test_a_model_that_cannot_load_fails_every_item():
    def broken():
        raise RuntimeError('no model')
    failures = []
    InProcessScorer(broken, _items(files=2, groups=1), threads=2).run(pytest.fail, failures.append)
    assert sorted(f.file_index for f in failures) == [0, 1] and {str(f) for f in failures} == {'RuntimeError: no '
                                                                                                 'model'}


def test_a_stop_in_delivery_stops_the_threads_before_it_propagates():
    """What a SIGTERM does: the exception unwinds the caller; no scoring thread is left, none delivers again."""
    class Stop(BaseException):
        pass
    calls = []

    def deliver(table):
        calls.append(1)
        raise Stop
    scorer = InProcessScorer(lambda: StandIn(delay=0.01), _items(files=4, groups=8), threads=2)
    with pytest.raises(Stop):
        scorer.run(deliver, pytest.fail)
    assert calls == [1] and scorer.scored_items < 32
    assert not [t for t in threading.enumerate() if t.name.startswith('numclip-score-')]
    with pytest.raises(ValueError, match='at least 1'):
        InProcessScorer(StandIn, _items(), threads=0)


def test_a_decoders_first_batch_is_small_and_every_later_one_full(tmp_path):
    """RowGroupDecoder(first_batch=3): its very first slice has 3 rows (an in-process thread's first predictions
    come after a few images), every later slice batch_size rows, in this item and the next; rows are each read
    once, in order, with their indices in the file."""
    from numclip_mm.batch.decode import RowGroupDecoder

    class Cells:
        def decode_many(self, cells):
            return [np.zeros((len(cells), 3, 2, 2), np.uint8)], [None] * len(cells)
    path = tmp_path / 'p.parquet'
    pq.write_table(pa.table({'image': pa.array([bytes([i]) for i in range(40)], pa.binary())}), path,
                   row_group_size=20)
    decoder = RowGroupDecoder(Cells(), 'image', batch_size=8, first_batch=3)
    first = [rows.tolist() for rows, *_ in decoder.slices(0, str(path), 0, offset=0)]
    second = [rows.tolist() for rows, *_ in decoder.slices(0, str(path), 1, offset=20)]
    assert [len(r) for r in first] == [3, 8, 8, 1] and [len(r) for r in second] == [8, 8, 4]
    assert sum(first + second, []) == list(range(40))
    plain = RowGroupDecoder(Cells(), 'image', batch_size=8)
    assert [len(r) for r, *_ in plain.slices(0, str(path), 0, offset=0, start=5, stop=20)] == [8, 7]


# ---------------------------------------------------------------------------------------------- whole jobs
@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """The tiny test model (random weights) and a 3-file demo catalog (30 rows each; one corrupt image in the
    first file)."""
    import torch
    from helpers import write_tiny_config
    from mmengine.config import Config
    from mmpretrain.registry import MODELS

    from numclip_mm.datasets.demo import write_demo_catalog
    root = tmp_path_factory.mktemp('in-process')
    cfg = write_tiny_config(root / 'tiny.py')
    torch.manual_seed(0)
    ckpt = str(root / 'tiny.pth')
    torch.save(dict(state_dict=MODELS.build(Config.fromfile(cfg).model).state_dict()), ckpt)
    cat = root / 'cat'
    for i in range(3):
        write_demo_catalog(str(cat / f'part-00{i}.parquet'), 30, seed=i, corrupt_rows=1 if i == 0 else 0)
    return dict(cfg=cfg, ckpt=ckpt, cat=cat)


def test_a_job_in_process_writes_what_the_predictor_says_and_fails_only_an_unreadable_file(tiny, tmp_path,
                                                                                         monkeypatch):
    """The real engine end to end through score_catalog: outputs in the input's row order, every value the
    Predictor's own for that image, a corrupt image a row error; a row group that cannot be decoded at all fails
    its file only (ScoringFailed, the other files written), and the next run scores that file alone."""
    from numclip_mm.batch import decode
    from numclip_mm.batch.pipeline import ScoringFailed, score_catalog
    from numclip_mm.inference import Predictor
    cfg, ckpt, cat = tiny['cfg'], tiny['ckpt'], tiny['cat']
    first = pq.read_table(cat / 'part-000.parquet')
    bad = json.loads(first.schema.metadata[b'numclip.corrupt_ids'])
    real_slices = decode.RowGroupDecoder.slices

    def slices(self, file_index, uri, *args):
        if uri.endswith('part-002.parquet'):
            raise OSError('the disk went away')
        return real_slices(self, file_index, uri, *args)
    monkeypatch.setattr(decode.RowGroupDecoder, 'slices', slices)
    opts = dict(config=cfg, checkpoint=ckpt, input=str(cat), output=str(tmp_path / 'out'), graph_cache='off',
                engine='in-process', batch_size=16)
    with pytest.raises(ScoringFailed, match='part-002.parquet: OSError: the disk went away') as failed:
        score_catalog(**opts)
    report = failed.value.report
    assert report['engine']['name'] == 'in-process' and report['sizing']['threads'] >= 1
    assert {f['input'].rsplit('/', 1)[1]: f['status'] for f in report['files']} == {
        'part-000.parquet': 'written', 'part-001.parquet': 'written', 'part-002.parquet': 'failed'}
    out = pq.read_table(tmp_path / 'out' / 'part-000.parquet')
    assert out['id'].to_pylist() == first['id'].to_pylist()
    errors = out['count_error'].to_pylist()
    assert [i for i, e in enumerate(errors) if e] == bad and out['count_value'][bad[0]].as_py() is None
    good = [i for i in range(30) if i not in bad]
    expected = Predictor(cfg, ckpt).predict([first['image'][i].as_py() for i in good])['value']
    np.testing.assert_allclose(out['count_value'].to_numpy(zero_copy_only=False)[good], expected, atol=1e-5)
    monkeypatch.setattr(decode.RowGroupDecoder, 'slices', real_slices)
    again = score_catalog(**opts)
    assert [f['status'] for f in again['files']] == ['skipped', 'skipped', 'written']
    assert pq.read_table(tmp_path / 'out' / 'part-002.parquet').num_rows == 30


def test_command_in_process_pauses_the_collector_until_the_job_is_prepared(tiny, tmp_path, monkeypatch):
    """The console command on the in-process engine (score.cli -> main(pause_gc=True)): no Ray start to wait for,
    so the garbage collector stays off through planning (start-up's long-lived objects), and what exists is frozen
    and collection resumes before scoring (the freeze at the end is the Ray path's test's: test_batch_catalogs)."""
    import gc

    from helpers import collector_states

    from numclip_mm.batch import score as score_module
    before = gc.get_freeze_count()
    with collector_states('_score_in_process') as states:
        try:
            code = score_module.main(['--config', tiny['cfg'], '--checkpoint', tiny['ckpt'], '--input',
                                      str(tiny['cat']), '--output', str(tmp_path / 'out'), '--engine', 'in-process',
                                      '--graph-cache', 'off', '--quiet'], pause_gc=True)
            after = gc.isenabled()
        finally:
            gc.enable()
    assert code == 0 and len(list((tmp_path / 'out').glob('*.parquet'))) == 3
    assert states['planning'] is False
    enabled, frozen = states['scoring']
    assert enabled and frozen > before and after
