"""OrdinalDataset, the task layouts and LoadOrdinalImage on small files written in each real layout."""
import io
import os.path as osp

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from mmpretrain.registry import DATASETS, TRANSFORMS
from PIL import Image

from numclip_mm.datasets import (
    AdienceDataset,
    AestheticsDataset,
    HCIDataset,
    ImageTooLargeError,
    LoadOrdinalImage,
    MorphDataset,
    OrdinalDataset,
    UnreadableImageError,
    adience_group_index,
    decode_bgr,
    few_shot_indices,
    label_shift_indices,
)

TEST_PIPELINE = [
    dict(type='LoadOrdinalImage'),
    dict(type='ResizeEdge', scale=40, edge='short'),
    dict(type='CenterCrop', crop_size=32),
    dict(type='PackInputs', algorithm_keys=['gt_value']),
]


def _png(rgb=(255, 0, 0), size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new('RGB', size, rgb).save(buf, format='PNG')
    return buf.getvalue()


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- list, CSV and Parquet annotations
def test_list_file_paths_values_and_bins(tmp_path):
    _write(tmp_path / 'ann.txt', '# comment\nimgs/a.jpg 23\n\nimgs/with space.jpg 64.5\nb.jpg 65\n')
    ds = OrdinalDataset(check_images=False, ann_file='ann.txt', task='age', data_root=str(tmp_path),
                        data_prefix='images')
    assert len(ds) == 3
    infos = [ds.get_data_info(i) for i in range(3)]
    assert infos[0]['img_path'] == osp.join(str(tmp_path), 'images', 'imgs/a.jpg')
    assert infos[1]['img_path'].endswith('imgs/with space.jpg')
    assert [i['gt_value'] for i in infos] == [23.0, 64.5, 65.0]
    assert [i['gt_label'] for i in infos] == [2, 3, 4]  # age edges 0, 13, 19, 35, 65
    assert ds.metainfo['classes'] == ('child', 'teenager', 'young adult', 'middle adult', 'older adult')
    np.testing.assert_array_equal(ds.get_gt_labels(), [2, 3, 4])
    np.testing.assert_array_equal(ds.get_gt_values(), [23, 64.5, 65])


def test_csv_and_custom_columns(tmp_path):
    pd.DataFrame({'file': ['x.png', 'y.png'], 'grade': [0, 4]}).to_csv(tmp_path / 'ann.csv', index=False)
    ds = OrdinalDataset(check_images=False, ann_file=str(tmp_path / 'ann.csv'), task='hci', path_column='file',
                        value_column='grade')
    assert [ds.get_data_info(i)['img_path'] for i in range(2)] == ['x.png', 'y.png']
    assert ds.get_gt_labels().tolist() == [0, 4]


def test_parquet_bytes_through_real_pipeline(tmp_path):
    pd.DataFrame({'image': [_png((255, 0, 0)), _png((0, 0, 255))], 'value': [3, 8]}).to_parquet(tmp_path / 'c.parquet')
    ds = OrdinalDataset(ann_file=str(tmp_path / 'c.parquet'), task='count', image_column='image',
                        pipeline=TEST_PIPELINE, test_mode=True)
    assert 'img_bytes' in ds.get_data_info(0) and 'img_path' not in ds.get_data_info(0)
    out = ds[0]
    assert out['inputs'].shape == (3, 32, 32) and out['inputs'].dtype == torch.uint8
    # BGR like LoadImageFromFile: pure red has its 255 in channel 2
    assert out['inputs'][:, 0, 0].tolist() == [0, 0, 255]
    sample = out['data_samples']
    assert sample.gt_label.tolist() == [1] and sample.gt_value == 3.0  # 3 objects -> bin 'few'
    assert ds[1]['data_samples'].gt_label.tolist() == [4]


def test_label_map_for_group_strings(tmp_path):
    pd.DataFrame({'path': ['a', 'b', 'c'], 'value': ['(0, 2)', '(60, 100)', '3']}).to_csv(tmp_path / 'a.csv',
                                                                                           index=False)
    ds = OrdinalDataset(check_images=False, ann_file=str(tmp_path / 'a.csv'), task='adience',
                        label_map={'(0, 2)': 0, '(60, 100)': 7})
    assert ds.get_gt_values().tolist() == [0.0, 7.0, 3.0]


# ---------------------------------------------------------------- errors name the file and the line
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.txt'):
        OrdinalDataset(ann_file='nope.txt', data_root=str(tmp_path))


def test_unparsable_value_names_file_and_line(tmp_path):
    path = _write(tmp_path / 'ann.txt', 'a.jpg 20\n\nb.jpg twenty\n')
    with pytest.raises(ValueError, match=rf"{path}: line 3: cannot parse value 'twenty'"):
        OrdinalDataset(ann_file=path)


def test_csv_error_line_counts_header(tmp_path):
    pd.DataFrame({'path': ['a', 'b', 'c'], 'value': [20, 30, 'x']}).to_csv(tmp_path / 'a.csv', index=False)
    with pytest.raises(ValueError, match=r'a.csv: line 4: cannot parse'):
        OrdinalDataset(ann_file=str(tmp_path / 'a.csv'))


def test_value_out_of_range_names_value_and_line(tmp_path):
    path = _write(tmp_path / 'ann.txt', 'a.jpg 20\nb.jpg 130\n')
    with pytest.raises(ValueError, match=rf'{path}: line 2: value 130 lies outside the bins of task .age.'):
        OrdinalDataset(ann_file=path, task='age')


def test_line_without_value(tmp_path):
    path = _write(tmp_path / 'ann.txt', 'a.jpg 20\nlonely.jpg\n')
    with pytest.raises(ValueError, match=rf"{path}: line 2: expected \"path value\", got 'lonely.jpg'"):
        OrdinalDataset(ann_file=path)


def test_missing_column(tmp_path):
    pd.DataFrame({'path': ['a'], 'age': [3]}).to_parquet(tmp_path / 'a.parquet')
    with pytest.raises(ValueError, match=r"a.parquet: missing column\(s\) \['value'\]; the file has \['path', 'age'\]"):
        OrdinalDataset(ann_file=str(tmp_path / 'a.parquet'))


def test_drop_unlabelled_counts(tmp_path):
    path = _write(tmp_path / 'ann.txt', 'a.jpg 20\nb.jpg None\nc.jpg 30\n')
    ds = OrdinalDataset(check_images=False, ann_file=path, drop_unlabelled=True)
    assert len(ds) == 2 and ds.num_dropped == 1


# ---------------------------------------------------------------- image loading
def test_load_image_from_path_and_unreadable_error(tmp_path):
    (tmp_path / 'ok.png').write_bytes(_png((0, 255, 0), size=(10, 6)))
    (tmp_path / 'bad.png').write_bytes(b'definitely not a png')
    load = TRANSFORMS.build(dict(type='LoadOrdinalImage'))
    out = load(dict(img_path=str(tmp_path / 'ok.png')))
    assert out['img'].shape == (6, 10, 3) and out['img'].dtype == np.uint8 and out['img_shape'] == (6, 10)
    assert out['img'][0, 0].tolist() == [0, 255, 0]
    with pytest.raises(UnreadableImageError, match=r'sample 7 \(.*bad.png\): cannot decode'):
        load(dict(img_path=str(tmp_path / 'bad.png'), sample_idx=7))
    with pytest.raises(UnreadableImageError, match='image file not found: .*missing.png'):
        load(dict(img_path=str(tmp_path / 'missing.png')))
    with pytest.raises(UnreadableImageError, match='sample 3: empty image'):
        load(dict(img_bytes=b'', sample_idx=3))
    img = np.zeros((4, 5, 3), np.uint8)
    assert LoadOrdinalImage()(dict(img=img))['img'] is img  # generated images pass through


def png_claiming_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR (with a valid CRC) claims ``width`` x ``height``: a bomb that is tiny on disk."""
    import struct
    import zlib
    data = bytearray(_png(size=(1, 1)))
    assert data[12:16] == b'IHDR'
    data[16:24] = struct.pack('>II', width, height)
    data[29:33] = struct.pack('>I', zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize('side', [8100, 20000])  # 65.6 Mpx: over our limit; 400 Mpx: PIL's bomb guard fires too
def test_pixel_limit_checked_from_header_before_decoding(tmp_path, side):
    (tmp_path / 'bomb.png').write_bytes(png_claiming_size(side, side))
    load = TRANSFORMS.build(dict(type='LoadOrdinalImage'))
    with pytest.raises(ImageTooLargeError, match=r'sample 2 \(.*bomb.png\): image too large: .* pixels exceeds '
                                                 r'the pixel limit max_pixels=64000000'):
        load(dict(img_path=str(tmp_path / 'bomb.png'), sample_idx=2))
    assert issubclass(ImageTooLargeError, ValueError)


def test_pixel_limit_is_configurable():
    content = _png(size=(40, 30))
    with pytest.raises(ImageTooLargeError, match=r'40x30 = 1200 pixels exceeds the pixel limit max_pixels=1000'):
        decode_bgr(content, 'x', max_pixels=1000)
    assert decode_bgr(content, 'x', max_pixels=1200).shape == (30, 40, 3)
    assert decode_bgr(content, 'x', max_pixels=None).shape == (30, 40, 3)
    load = TRANSFORMS.build(dict(type='LoadOrdinalImage', max_pixels=100))
    with pytest.raises(ImageTooLargeError):
        load(dict(img_bytes=content))


def test_skip_unreadable_is_deterministic_and_counted(tmp_path):
    for name in ('a', 'c'):
        (tmp_path / f'{name}.png').write_bytes(_png())
    (tmp_path / 'b.png').write_bytes(b'broken')
    _write(tmp_path / 'ann.txt', 'a.png 1\nb.png 5\nc.png 9\n')
    strict = OrdinalDataset(ann_file='ann.txt', task='count', data_root=str(tmp_path), pipeline=TEST_PIPELINE,
                            test_mode=True, check_images=False)
    with pytest.raises(UnreadableImageError, match='b.png'):
        strict[1]
    ds = OrdinalDataset(ann_file='ann.txt', task='count', data_root=str(tmp_path), pipeline=TEST_PIPELINE,
                        skip_unreadable=True, check_images=False)
    assert ds[1]['data_samples'].gt_value == 9.0  # the next readable sample, not a random one
    assert ds[1]['data_samples'].gt_value == 9.0 and ds.num_unreadable == 1
    assert ds[0]['data_samples'].gt_value == 1.0


# ---------------------------------------------------------------- few-shot and label shift
def test_few_shot_indices():
    values = np.array([20, 20, 20, 21, 22, 22, 22, 22, 20])
    idx = few_shot_indices(values, 2, seed=0)
    kept = values[idx]
    assert {v: int((kept == v).sum()) for v in (20, 21, 22)} == {20: 2, 21: 1, 22: 2}
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, few_shot_indices(values, 2, seed=0))
    draws = {tuple(few_shot_indices(values, 2, seed=s)) for s in range(10)}
    assert len(draws) > 1  # the seed matters


def test_label_shift_indices():
    # counts: 30 -> 6, 31 -> 4, 32 -> 2, 33 -> 1; the top-2 values keep max(1, floor(0.5 * n)) = 3 and 2
    values = np.array([30] * 6 + [31] * 4 + [32] * 2 + [33])
    kept = values[label_shift_indices(values, num_topk=2, ratio=0.5, seed=1)]
    assert {v: int((kept == v).sum()) for v in (30, 31, 32, 33)} == {30: 3, 31: 2, 32: 2, 33: 1}
    kept = values[label_shift_indices(values, num_topk=4, ratio=0.1, seed=1)]
    assert {v: int((kept == v).sum()) for v in (30, 31, 32, 33)} == {30: 1, 31: 1, 32: 1, 33: 1}


def test_dataset_few_shot_from_config(tmp_path):
    lines = ''.join(f'{i}.jpg {20 + i % 3}\n' for i in range(30))
    _write(tmp_path / 'ann.txt', lines)
    cfg = dict(type='OrdinalDataset', ann_file=str(tmp_path / 'ann.txt'), num_shots=4, seed=3, check_images=False)
    a, b = DATASETS.build(cfg), DATASETS.build(cfg)
    assert len(a) == 12
    assert [a.get_data_info(i)['img_path'] for i in range(12)] == [b.get_data_info(i)['img_path'] for i in range(12)]
    shifted = DATASETS.build(dict(type='OrdinalDataset', ann_file=str(tmp_path / 'ann.txt'), check_images=False,
                                  label_shift=dict(num_topk=1, ratio=0.2)))
    assert len(shifted) == 2 + 10 + 10


# ---------------------------------------------------------------- task layouts
def test_morph_layout(tmp_path):
    _write(tmp_path / 'ET_proto_train.txt', 'Album2/001_0M16.JPG 16\nAlbum2/002_1M77.JPG 77\n')
    ds = DATASETS.build(dict(check_images=False, type='MorphDataset', data_root=str(tmp_path), data_prefix='images'))
    assert isinstance(ds, MorphDataset) and ds.task.name == 'age'
    assert ds.get_data_info(1)['img_path'] == osp.join(str(tmp_path), 'images', 'Album2/002_1M77.JPG')
    assert ds.get_gt_labels().tolist() == [1, 4]


def test_hci_layout_and_one_based(tmp_path):
    _write(tmp_path / 'labels/fold_2/test.txt', '1930s/a.jpg 0\n1970s/b.jpg 4\n')
    ds = HCIDataset(check_images=False, data_root=str(tmp_path), fold=2, split='test')
    assert ds.get_gt_labels().tolist() == [0, 4] and ds.metainfo['classes'][4] == '1970s'
    _write(tmp_path / 'labels/fold_0/train.txt', '1930s/a.jpg 1\n1970s/b.jpg 5\n')
    ds = HCIDataset(check_images=False, data_root=str(tmp_path), fold=0, split='train', one_based=True)
    assert ds.get_gt_values().tolist() == [0.0, 4.0]
    with pytest.raises(ValueError, match=r'fold_0/train.txt: line 2: value 5 lies outside'):
        HCIDataset(data_root=str(tmp_path), fold=0, split='train')


def test_aesthetics_categories(tmp_path):
    for i, cat in enumerate(('animals', 'nature', 'people', 'urban')):
        _write(tmp_path / f'{cat}_train.txt', f'{cat}/1.jpg {i}\n{cat}/2.jpg 4\n')
    every = AestheticsDataset(check_images=False, data_root=str(tmp_path), category='all', split='train')
    assert len(every) == 8
    assert [every.get_data_info(i)['img_path'].split('/')[-2] for i in (0, 2, 4, 6)] == [
        'animals', 'nature', 'people', 'urban']
    people = AestheticsDataset(check_images=False, data_root=str(tmp_path), category='people', split='train')
    assert people.get_gt_values().tolist() == [2.0, 4.0]
    with pytest.raises(ValueError, match='unknown aesthetics categories'):
        AestheticsDataset(data_root=str(tmp_path), category='cats')


ADIENCE_HEADER = ('user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\t'
                  'fiducial_score\n')


def _adience_row(user, image, face, age):
    return f'{user}\t{image}\t{face}\t{age}\tf\t0\t0\t10\t10\t0\t0\t50\n'


def test_adience_group_mapping():
    ages = pd.Series(['(0, 2)', '(25, 32)', '(60, 100)', '(38, 42)', '(8, 23)', '35', '3', '57', 'None', '13', '2'])
    got = adience_group_index(ages)
    expected = [0, 4, 7, 5, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, 0]
    np.testing.assert_array_equal(got, expected)


def test_adience_layout(tmp_path):
    _write(tmp_path / 'fold_0_data.txt', ADIENCE_HEADER + _adience_row('u1', 'p.jpg', 7, '(25, 32)')
           + _adience_row('u1', 'q.jpg', 8, '(60, 100)'))
    _write(tmp_path / 'fold_1_data.txt', ADIENCE_HEADER + _adience_row('u2', 'r.jpg', 9, '(4, 6)')
           + _adience_row('u2', 's.jpg', 10, 'None') + _adience_row('u3', 't.jpg', 11, '16'))
    with pytest.raises(ValueError, match=r"fold_1_data.txt: line 3: cannot parse value 'None'"):
        AdienceDataset(data_root=str(tmp_path), folds=[0, 1])
    ds = DATASETS.build(dict(check_images=False, type='AdienceDataset', data_root=str(tmp_path), folds=[0, 1],
                             drop_unlabelled=True))
    assert len(ds) == 4 and ds.num_dropped == 1
    assert ds.get_data_info(0)['img_path'] == osp.join(str(tmp_path), 'faces/u1/coarse_tilt_aligned_face.7.p.jpg')
    assert ds.get_gt_labels().tolist() == [4, 7, 1, 3]  # '16' lies in (15, 20)


def test_bgr_decoding_matches_cv2(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (8, 9, 3), dtype=np.uint8)
    ok, buf = cv2.imencode('.png', rgb[..., ::-1])
    out = LoadOrdinalImage()(dict(img_bytes=buf.tobytes()))
    np.testing.assert_array_equal(out['img'], rgb[..., ::-1])
    assert 'img_bytes' not in out


# ---------------------------------------------------------------- hostile annotation files name the file and line
@pytest.mark.parametrize('name, content, message', [
    ('empty.csv', '', r'empty.csv: empty annotation file \(0 bytes\)'),
    ('header.csv', 'path,value\n', r"no annotation rows in \[.*header.csv'\]"),
    ('extra.csv', 'path,value\na.png,3\nb.png,4,5\n',
     r"extra.csv: line 3: 3 fields where the header has 2 \('b.png,4,5'\)"),
    ('bad.csv', 'path,value\na.png,3\nb.png,abc\n', r"bad.csv: line 3: cannot parse value 'abc'"),
    ('nan.csv', 'path,value\na.png,nan\n', r"nan.csv: line 2: cannot parse value 'nan'"),
    ('quote.csv', 'path,value\na.png,3\n"b.png,4\n', r'quote.csv: .*unterminated quote'),
    ('allextra.csv', 'path,value\na.png,3,x\nb.png,4,y\n', r'allextra.csv: line 2: 3 fields where the header has 2'),
    ('empty.txt', '', r"no annotation rows in \[.*empty.txt'\]"),
    ('empty.parquet', '', r'empty.parquet: cannot read the Parquet annotation file \(0 bytes'),
    ('short.tsv', 'path\tvalue\na.png\t1\nb.png\t2\tx\n', r"short.tsv: line 3: 3 fields"),
])
def test_hostile_annotation_files_name_file_and_line(tmp_path, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(ValueError, match=message):
        OrdinalDataset(ann_file=path, task='count')


def test_list_file_not_utf8_names_the_line(tmp_path):
    (tmp_path / 'ann.txt').write_bytes(b'a.png 1\nb\xff.png 2\n')
    with pytest.raises(ValueError, match=r'ann.txt: line 2: not UTF-8 text'):
        OrdinalDataset(ann_file=str(tmp_path / 'ann.txt'), task='count')


def test_adience_malformed_fold_file_names_file_and_line(tmp_path):
    header = 'user_id\toriginal_image\tface_id\tage\n'
    _write(tmp_path / 'fold_0_data.txt', header + 'u\ti.jpg\t1\t(0, 2)\textra\n')
    with pytest.raises(ValueError, match=r'fold_0_data.txt: line 2: 5 fields where the header has 4'):
        AdienceDataset(data_root=str(tmp_path), folds=[0])


# ---------------------------------------------------------------- up-front image check
def _images_with_holes(tmp_path):
    (tmp_path / 'ok.png').write_bytes(_png())
    (tmp_path / 'ok2.png').write_bytes(_png())
    (tmp_path / 'broken.png').write_bytes(b'broken')
    (tmp_path / 'bomb.png').write_bytes(png_claiming_size(20000, 20000))
    return _write(tmp_path / 'ann.txt', 'ok.png 1\nmissing.png 2\nbroken.png 3\nok2.png 4\nbomb.png 5\n')


def test_check_images_lists_missing_and_unreadable_up_front(tmp_path):
    _images_with_holes(tmp_path)
    with pytest.raises(UnreadableImageError) as info:
        OrdinalDataset(ann_file='ann.txt', task='count', data_root=str(tmp_path), pipeline=TEST_PIPELINE)
    text = str(info.value)
    assert '3 of 5 images' in text
    assert 'sample 1: image file not found: ' in text and 'missing.png' in text
    assert 'sample 2 (' in text and 'broken.png): cannot decode' in text
    assert 'sample 4 (' in text and 'bomb.png' in text and 'max_pixels' in text
    assert 'ok.png' not in text.replace('ok.png 1', '')  # the good samples are not listed


def test_check_images_with_skip_unreadable_leaves_them_out(tmp_path):
    _images_with_holes(tmp_path)
    ds = OrdinalDataset(ann_file='ann.txt', task='count', data_root=str(tmp_path), pipeline=TEST_PIPELINE,
                        skip_unreadable=True)
    assert len(ds) == 2 and [ds.get_data_info(i)['gt_value'] for i in range(2)] == [1.0, 4.0]
    assert len(ds.unreadable_images) == 3 and ds[1]['data_samples'].gt_value == 4.0


def test_check_images_auto_only_for_small_sets(tmp_path, monkeypatch):
    import numclip_mm.datasets.ordinal_dataset as module
    _images_with_holes(tmp_path)
    monkeypatch.setattr(module, 'CHECK_IMAGES_AUTO_LIMIT', 4)  # 5 samples: above the limit, not checked
    assert len(OrdinalDataset(ann_file='ann.txt', task='count', data_root=str(tmp_path))) == 5
    with pytest.raises(UnreadableImageError, match='3 of 5'):  # forced on
        OrdinalDataset(ann_file='ann.txt', task='count', data_root=str(tmp_path), check_images=True)
    with pytest.raises(ValueError, match='check_images'):
        OrdinalDataset(ann_file='ann.txt', task='count', data_root=str(tmp_path), check_images='yes')


def test_check_images_uses_the_pipeline_pixel_limit(tmp_path):
    (tmp_path / 'a.png').write_bytes(_png(size=(40, 30)))
    _write(tmp_path / 'ann.txt', 'a.png 1\n')
    pipeline = [dict(type='LoadOrdinalImage', max_pixels=1000), dict(type='PackInputs')]
    with pytest.raises(UnreadableImageError, match='(?s)1 of 1 images.*1200 pixels exceeds'):
        OrdinalDataset(ann_file='ann.txt', task='count', data_root=str(tmp_path), pipeline=pipeline)
    pipeline[0]['max_pixels'] = None
    assert len(OrdinalDataset(ann_file='ann.txt', task='count', data_root=str(tmp_path), pipeline=pipeline)) == 1
