"""The driver's head start (numclip_mm.batch.head_start) and the claims that keep every work item scored once
(numclip_mm.batch.claims), without Ray: a stand-in actor yields one small table per batch. The head start inside
real jobs: test_batch_scorer (test_head_start_*) and test_batch_cli."""
import os
import threading

import numpy as np
import pyarrow as pa
import pytest
import torch

from numclip_mm.batch.claims import DRIVER, POOL, WorkClaims, item_key
from numclip_mm.batch.head_start import HeadStart


@pytest.fixture
def claims(tmp_path):
    return WorkClaims(str(tmp_path))


def test_first_claim_wins_and_a_side_may_retry_its_own(claims):
    assert claims.claim('0-1', POOL)
    assert not claims.claim('0-1', DRIVER)  # the pool has it
    assert claims.claim('0-1', POOL)        # Ray retrying the item on a restarted actor
    assert claims.claim('3-0', DRIVER) and not claims.claim('3-0', POOL)
    assert claims.owner('0-1') == POOL and claims.owner('3-0') == DRIVER and claims.owner('9-9') is None
    assert sorted(os.listdir(claims.root)) == ['0-1', '3-0']  # no claim notes left behind
    with pytest.raises(ValueError, match='owner'):
        claims.claim('1-1', 'someone')
    assert item_key(np.int64(2), 7) == '2-7-0' and item_key(2, 7, np.int64(150)) == '2-7-150'


def test_racing_claimers_never_both_win(claims):
    """16 threads (8 per side) claim the same 200 items at once: each item has exactly one owner, every claimer of
    that side is told yes and every claimer of the other side no."""
    keys = [f'{i}-0' for i in range(200)]
    answers = {}
    start = threading.Barrier(16)

    def claimer(owner, n):
        start.wait()
        answers[(owner, n)] = [claims.claim(k, owner) for k in keys]
    threads = [threading.Thread(target=claimer, args=(owner, n)) for owner in (DRIVER, POOL) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, key in enumerate(keys):
        owner = claims.owner(key)
        assert owner in (DRIVER, POOL)
        for (side, _), said in answers.items():
            assert said[i] == (side == owner), (key, side, owner)
    assert len(os.listdir(claims.root)) == len(keys)


class StandIn:
    """An InferenceActor stand-in: ``batches`` tables of ``rows`` rows per item (file index, row index); records
    the items it saw and this thread's nice value; raises on the items in ``fail``."""

    def __init__(self, batches=1, rows=2, fail=(), on_batch=None):
        self.batches, self.rows, self.fail, self.on_batch = batches, rows, set(fail), on_batch
        self.seen, self.nice = [], None
        torch.set_num_threads(1)  # as InferenceActor does

    def __call__(self, batch):
        item = (int(batch['file'][0]), int(batch['row_group'][0]))
        self.seen.append(item)
        self.nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        if item in self.fail:
            raise OSError(f'cannot read {item}')
        for b in range(self.batches):
            rows = item[1] * 100 + b * self.rows + np.arange(self.rows)
            if self.on_batch:
                self.on_batch(item, b)
            yield pa.table({'file': np.full(self.rows, item[0]), 'row': rows})


def _items(n):
    return [dict(file=i // 2, path=f'f{i // 2}', row_group=i % 2, offset=0, start=0, stop=2) for i in range(n)]


def test_scores_from_the_back_until_stopped_and_finishes_the_item_in_hand(claims):
    """Items go from the back; after stop() the item in hand is finished (it is claimed: nobody else scores it) and
    no further item is taken; predictions that came before attach() are delivered first, in order."""
    got, stopped = [], threading.Event()
    head = None

    def on_batch(item, b):
        if item == (2, 0) and b == 0:  # mid-way through the 2nd item (from the back)
            head.stop()
            stopped.set()
    actor = StandIn(batches=3, on_batch=on_batch)
    threads = torch.get_num_threads()
    head = HeadStart(lambda: actor, _items(6), claims).start()
    assert stopped.wait(30)
    head.attach(got.append)
    head.join(30)
    assert not head.running and head.error is None
    assert actor.seen == [(2, 1), (2, 0)]
    assert head.scored_items == 2 and head.rows == 2 * 3 * 2 and head.first_output is not None
    assert [(int(t['file'][0]), int(t['row'][0])) for t in got] == [(2, 100), (2, 102), (2, 104), (2, 0), (2, 2),
                                                                    (2, 4)]
    assert claims.owner('2-1-0') == claims.owner('2-0-0') == DRIVER
    assert all(claims.claim(item_key(i // 2, i % 2), POOL) for i in range(4))  # the rest is the pool's
    assert torch.get_num_threads() == threads  # the caller's setting is back
    if hasattr(os, 'setpriority'):
        assert actor.nice == 19  # the driver's thread yields to Ray's daemons and the actors


def test_skips_items_the_pool_claimed(claims):
    for key in ('2-1-0', '1-0-0'):
        assert claims.claim(key, POOL)
    actor = StandIn()
    head = HeadStart(lambda: actor, _items(6), claims).start()
    head.join(30)
    assert actor.seen == [(2, 0), (1, 1), (0, 1), (0, 0)]
    assert head.scored_items == 4


def test_abort_stops_between_batches(claims):
    """After abort() (the job is ending) nothing more is delivered, and the thread ends at the next batch."""
    head, got = None, []

    def on_batch(item, b):
        if b == 1:
            head.abort()
    actor = StandIn(batches=5, on_batch=on_batch)
    head = HeadStart(lambda: actor, _items(4), claims)
    head.attach(got.append)
    head.start().join(30)
    assert not head.running and head.error is None
    assert actor.seen == [(1, 1)] and len(got) == 1 and head.rows == 2 and head.scored_items == 0


def test_a_failure_names_the_file_of_the_item_in_hand(claims):
    actor = StandIn(fail={(1, 0)})
    head = HeadStart(lambda: actor, _items(6), claims).start()
    head.join(30)
    assert isinstance(head.error, OSError) and 'cannot read (1, 0)' in str(head.error)
    assert head.failed_file == 1 and head.scored_items == 3  # (2, 1), (2, 0), (1, 1) done, then (1, 0) failed
    assert claims.owner('1-0-0') == DRIVER  # claimed: the pipeline fails that file (the pool skipped it)
    assert claims.owner('0-1-0') is None    # never taken: the pool scores it

    broken = HeadStart(lambda: (_ for _ in ()).throw(MemoryError('no room')), _items(2), claims).start()
    broken.join(30)
    assert isinstance(broken.error, MemoryError) and broken.failed_file is None  # before any item: none failed


def _plan(path, groups):
    from numclip_mm.batch.catalog import FilePlan
    return FilePlan(path, path + '.out', sum(groups), list(groups), {})


def test_a_small_local_job_is_cut_into_slices():
    """Few row groups (4 files of 300 large JPEGs: one actor, or the driver, scored the last while another idled)
    become slices of at least 128 rows, up to 16 items; many row groups, or an object store's, stay whole (a slice
    reads its row group's column again)."""
    from numclip_mm.batch.pipeline import MIN_SLICE_ROWS, item_rows, work_items
    small = [_plan(f'/data/p{i}.parquet', [300]) for i in range(4)]
    rows = item_rows(small)
    assert rows == MIN_SLICE_ROWS == 128
    items = work_items(small, rows)
    assert [(it['start'], it['stop']) for it in items[:3]] == [(0, 100), (100, 200), (200, 300)] and len(items) == 12
    assert {(it['file'], it['row_group'], it['offset']) for it in items} == {(i, 0, 0) for i in range(4)}
    big = [_plan('/data/a.parquet', [1000] * 10 + [0]), _plan('/data/b.parquet', [1000] * 6)]
    assert item_rows(big) is None  # 16 row groups: whole
    whole = work_items(big)
    assert len(whole) == 16 and whole[10] == dict(file=1, path='/data/b.parquet', row_group=0, offset=0, start=0,
                                                   stop=1000)
    assert whole[9]['offset'] == 9000
    assert item_rows([_plan('s3://bucket/p.parquet', [300])]) is None
    assert item_rows([_plan('file:///data/p.parquet', [300] * 2)]) == 128
    assert item_rows([_plan('/data/p.parquet', [5000] * 3)]) == 938  # 15,000 rows / 16 items


def test_row_group_decoder_reads_a_slice(tmp_path):
    """A slice's rows keep their index in the file (the row group's offset + their place in it) and their cells'
    CRCs; batches stop at the slice's end."""
    import pyarrow.parquet as pq

    from numclip_mm.batch.columns import cell_crcs
    from numclip_mm.batch.decode import CellDecoder, RowGroupDecoder
    cells = [f'not an image {i}'.encode() for i in range(10)]
    path = tmp_path / 'p.parquet'
    pq.write_table(pa.table({'image': pa.array(cells, pa.binary())}), path, row_group_size=10)
    decoder = RowGroupDecoder(CellDecoder([], 'bytes', 1 << 20, 1 << 20, None, str(tmp_path), 5.0), 'image', 4)
    got = list(decoder.slices(0, str(path), 0, 20, start=3, stop=9))
    assert [list(rows) for rows, _, _, _ in got] == [[23, 24, 25, 26], [27, 28]]
    assert [list(crcs) for _, crcs, _, _ in got] == [list(cell_crcs(pa.array(cells[3:7]))),
                                                     list(cell_crcs(pa.array(cells[7:9])))]
    assert all(e is not None for _, _, errors, _ in got for e in errors)  # (not images: an error per row)
