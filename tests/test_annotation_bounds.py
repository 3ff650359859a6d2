"""Training annotations that used to be misread in silence: a byte-order mark on the first path, a task edge of NaN,
one image listed with two values, and a line so long that reading it cost gigabytes before its error."""
import resource
import time

import pandas as pd
import pytest

from numclip_mm.datasets import AdienceDataset, OrdinalDataset
from numclip_mm.datasets.ordinal_dataset import MAX_LINE_BYTES
from numclip_mm.tasks import OrdinalTask, get_task

BOM = '\ufeff'


def _build(tmp_path, name, **kw):
    return OrdinalDataset(ann_file=str(tmp_path / name), task='count', check_images=False, **kw)


@pytest.mark.parametrize('name,text', [('ann.txt', f'{BOM}a.png 1\nb.png 5\n'),
                                       ('ann.csv', f'{BOM}path,value\na.png,1\nb.png,5\n'),
                                       ('ann.tsv', f'{BOM}path\tvalue\na.png\t1\nb.png\t5\n')])
def test_byte_order_mark_is_stripped_in_every_text_format(tmp_path, name, text):
    (tmp_path / name).write_text(text, encoding='utf-8')
    ds = _build(tmp_path, name)
    assert [ds.get_data_info(i)['img_path'] for i in range(2)] == ['a.png', 'b.png']


def test_byte_order_mark_is_stripped_in_adience_folds(tmp_path):
    (tmp_path / 'fold_0_data.txt').write_text(f'{BOM}user_id\toriginal_image\tface_id\tage\nu1\ti.jpg\t7\t(0, 2)\n')
    ds = AdienceDataset(data_root=str(tmp_path), folds=[0], check_images=False)
    assert ds.get_data_info(0)['img_path'].endswith('faces/u1/coarse_tilt_aligned_face.7.i.jpg')


@pytest.mark.parametrize('field,value', [('edges', (0, float('nan'), 4)), ('edges', (0, 2, float('inf'))),
                                         ('anchors', (0, float('nan'), 4)), ('upper', float('nan')),
                                         ('upper', float('inf'))])
def test_task_numbers_must_be_finite(field, value):
    fields = dict(name='t', edges=(0, 2, 4), concepts=('a', 'b', 'c'), context='x', upper=9)
    fields[field] = value
    with pytest.raises(ValueError, match=f'{field} must be finite'):
        OrdinalTask(**fields)
    with pytest.raises(ValueError, match='must be finite'):  # the same from a config's task dict
        get_task(dict(base='count', edges=(0, 2, float('nan'), 6, 8)))


def test_conflicting_duplicates_are_refused_or_kept_on_request(tmp_path):
    (tmp_path / 'a.txt').write_text('x.png 3\ny.png 4\n')
    (tmp_path / 'b.txt').write_text('z.png 1\n./x.png 7\ny.png 4\n')  # x.png: 3 and 7; y.png twice with one value
    files = [str(tmp_path / 'a.txt'), str(tmp_path / 'b.txt')]
    with pytest.raises(ValueError, match=r"1 image\(s\) listed with conflicting values, e.g. 'x.png': "
                                         r"3 \(.*a.txt: line 1\), 7 \(.*b.txt: line 2\)"):
        OrdinalDataset(ann_file=files, task='count', check_images=False)
    ds = OrdinalDataset(ann_file=files, task='count', check_images=False, allow_conflicting_duplicates=True)
    assert [ds.get_data_info(i)['gt_value'] for i in range(len(ds))] == [3, 4, 1, 7, 4]
    frame = pd.DataFrame({'image': [b'same', b'same'], 'value': [1, 2]})  # image bytes: not a path, not compared
    frame.to_parquet(tmp_path / 'bytes.parquet')
    assert len(OrdinalDataset(ann_file=str(tmp_path / 'bytes.parquet'), task='count', image_column='image',
                              check_images=False)) == 2


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_gigabyte_line_fails_fast_with_small_memory(tmp_path):
    ann = tmp_path / 'ann.txt'
    with open(ann, 'wb') as f:
        f.write(b'a.png 1\nb.png 2\n')
        f.truncate(16 + (1 << 30))  # one 1 GiB line (sparse: no disk used)
    before, start = _peak_rss_mb(), time.monotonic()
    with pytest.raises(ValueError, match=f'ann.txt: line 3: longer than {MAX_LINE_BYTES} bytes'):
        _build(tmp_path, 'ann.txt')
    assert time.monotonic() - start < 5
    assert _peak_rss_mb() - before < 64  # the old reader held the whole line, several times over
    for name, text in [('csv.csv', 'path,value\n' + 'p' * 3000 + ',1\n'), ('ok.txt', 'a.png 1\n' * 50_000)]:
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match='csv.csv: line 2: longer than 2048 bytes'):
        _build(tmp_path, 'csv.csv', max_line_bytes=2048)
    assert len(_build(tmp_path, 'ok.txt', max_line_bytes=16, allow_conflicting_duplicates=False)) == 50_000
