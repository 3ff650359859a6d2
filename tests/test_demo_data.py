"""The generated counting data: determinism, disjoint splits, a visible count, and the Parquet catalog."""
import json
import time

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from mmpretrain.registry import DATASETS

from numclip_mm.datasets import DemoCountDataset, decode_bgr, generate_count_images, write_demo_catalog
from numclip_mm.datasets.demo import main as demo_main


def _count_blobs(rgb: np.ndarray) -> int:
    """A classical counter: objects are small and contrast strongly with a smooth background."""
    bg = cv2.medianBlur(rgb, 21).astype(int)
    fg = (np.abs(rgb.astype(int) - bg).max(-1) > 50).astype(np.uint8)
    return cv2.connectedComponents(fg, connectivity=8)[0] - 1


def test_generation_is_deterministic_fast_and_uniform():
    t0 = time.perf_counter()
    images, counts = generate_count_images(1000, 64, seed=0, split='train')
    assert time.perf_counter() - t0 < 5
    assert images.shape == (1000, 64, 64, 3) and images.dtype == np.uint8
    assert counts.min() == 0 and counts.max() == 9 and np.bincount(counts).min() > 60
    again, counts2 = generate_count_images(20, 64, seed=0, split='train')
    np.testing.assert_array_equal(again, images[:20])
    np.testing.assert_array_equal(counts2, counts[:20])


def test_splits_and_seeds_differ():
    train, _ = generate_count_images(50, 64, seed=0, split='train')
    val, _ = generate_count_images(50, 64, seed=0, split='val')
    other, _ = generate_count_images(50, 64, seed=1, split='train')
    flat = lambda a: {im.tobytes() for im in a}  # noqa: E731
    assert not flat(train) & flat(val) and not flat(train) & flat(other)


def test_count_is_visible():
    images, counts = generate_count_images(200, 64, seed=7, split='test')
    est = np.array([_count_blobs(im) for im in images])
    assert (est == counts).mean() > 0.9  # a real, learnable ordinal signal


def test_dataset_infos_and_pipeline():
    ds = DATASETS.build(dict(type='DemoCountDataset', split='val', num_samples=30, seed=2,
                             pipeline=[dict(type='RandomFlip', prob=0.5, direction='horizontal'),
                                       dict(type='PackInputs', algorithm_keys=['gt_value'])]))
    assert isinstance(ds, DemoCountDataset) and len(ds) == 30
    info = ds.get_data_info(0)
    images, counts = generate_count_images(30, 64, seed=2, split='val')
    np.testing.assert_array_equal(info['img'], images[0][..., ::-1])  # BGR
    assert info['gt_value'] == float(counts[0]) and info['gt_label'] == int(ds.task.value_to_bin(counts[0]))
    out = ds[0]
    assert out['inputs'].shape == (3, 64, 64)
    assert out['data_samples'].gt_value == float(counts[0])
    assert out['data_samples'].gt_label.tolist() == [info['gt_label']]
    assert ds.metainfo['classes'] == ('none', 'few', 'several', 'many', 'lots')
    assert DemoCountDataset('train', lazy_init=True).num_samples == 1000  # default split sizes
    with pytest.raises(ValueError, match='split'):
        DemoCountDataset('holdout')


def test_few_shot_keeps_n_images_per_count():
    full = DemoCountDataset('train', num_samples=120, seed=3)
    few = DemoCountDataset('train', num_samples=120, seed=3, num_shots=2)
    values = np.array([few.get_data_info(i)['gt_value'] for i in range(len(few))])
    full_values = np.array([full.get_data_info(i)['gt_value'] for i in range(len(full))])
    assert np.array_equal(np.unique(values, return_counts=True)[1], np.minimum(np.bincount(
        full_values.astype(int)), 2))  # 2 per count, all of a count with fewer
    kept = [next(i for i in range(len(full))
                 if np.array_equal(full.get_data_info(i)['img'], few.get_data_info(j)['img']))
            for j in range(len(few))]
    assert kept == sorted(kept)  # a subset of the same images, in their order
    assert 'Shots per count: 2' in repr(few)
    with pytest.raises(ValueError, match='num_shots'):
        DemoCountDataset('train', num_samples=10, num_shots=0)


def test_with_load_transform_and_resize():
    ds = DemoCountDataset('test', num_samples=4, image_size=48,
                          pipeline=[dict(type='LoadOrdinalImage'), dict(type='Resize', scale=(32, 32)),
                                    dict(type='PackInputs', algorithm_keys=['gt_value'])])
    assert ds[3]['inputs'].shape == (3, 32, 32)


def test_catalog_round_trip_with_bad_rows(tmp_path):
    path = write_demo_catalog(str(tmp_path / 'cat.parquet'), 40, seed=3, corrupt_rows=2, missing_path_rows=3)
    table = pq.read_table(path)
    assert table.schema.field('id').type == 'int64' and str(table.schema.field('image').type) == 'binary'
    assert table.column('id').to_pylist() == list(range(40))
    meta = table.schema.metadata
    corrupt = json.loads(meta[b'numclip.corrupt_ids'])
    missing = json.loads(meta[b'numclip.missing_ids'])
    assert len(corrupt) == 2 and len(missing) == 3 and not set(corrupt) & set(missing)
    images, values = table.column('image').to_pylist(), table.column('value').to_pylist()
    for i in missing:
        assert images[i] == b''
    unreadable = []
    for i, content in enumerate(images):
        try:
            decode_bgr(content, f'row {i}')
        except ValueError:
            unreadable.append(i)
    assert sorted(unreadable) == sorted(corrupt + missing)
    good = [i for i in range(40) if i not in unreadable]
    est = np.array([_count_blobs(decode_bgr(images[i], '')[..., ::-1]) for i in good])
    assert (est == np.array(values)[good]).mean() > 0.85
    # the same seed writes the same file content
    again = write_demo_catalog(str(tmp_path / 'again.parquet'), 40, seed=3, corrupt_rows=2, missing_path_rows=3)
    assert pq.read_table(again).equals(table)


def test_catalog_jpeg_and_cli(tmp_path, capsys):
    path = demo_main(['--out', str(tmp_path / 'out'), '--rows', '12', '--image-format', 'jpeg'])
    assert capsys.readouterr().out.strip() == path and path.endswith('out/catalog.parquet')
    table = pq.read_table(path)
    assert table.num_rows == 12 and table.column('image')[0].as_py()[:2] == b'\xff\xd8'  # JPEG magic
    with pytest.raises(ValueError, match='exceed'):
        write_demo_catalog(str(tmp_path / 'x.parquet'), 3, corrupt_rows=2, missing_path_rows=2)


def test_module_cli_runs_as_script(tmp_path):
    """``python -m numclip_mm.datasets.demo`` must not register anything twice (the dataset lives elsewhere)."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, '-m', 'numclip_mm.datasets.demo', '--out', str(tmp_path), '--rows', '5'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert pq.read_table(str(tmp_path / 'catalog.parquet')).num_rows == 5
