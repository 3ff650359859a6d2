"""An embedded, generated ordinal data set: pictures of 0..9 objects (task 'count'), so the demo needs no download.

The number of objects is the label and is plainly visible (non-overlapping shapes with strong contrast against a
noisy gradient background; random positions, sizes, shapes and colours), so a model can learn a real visual
ordinal signal. Everything is deterministic in ``seed``; each split draws from its own seed stream.

CLI: ``python -m numclip_mm.datasets.demo --out DIR --rows N`` writes ``DIR/catalog.parquet`` (``id``, ``image``,
``value``) for the batch scorer. The registered dataset lives in ``demo_dataset.py``, so that running this module
as a script registers nothing twice.
"""
import argparse
import json
import os
import os.path as osp
from typing import List

import cv2
import numpy as np

SPLIT_STREAMS = {'train': 0, 'val': 1, 'test': 2, 'catalog': 3}
MAX_COUNT = 9


def _draw_image(count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One RGB uint8 image with ``count`` separated shapes."""
    dark_bg = rng.random() < 0.5
    lo, hi = (10, 100) if dark_bg else (150, 245)
    corners = rng.uniform(lo, hi, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, size)
    ramp = ramp[:, None, None] if rng.random() < 0.5 else ramp[None, :, None]
    img = corners[0] + (corners[1] - corners[0]) * ramp + rng.normal(0, 6, size=(size, size, 3))
    img = np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8))
    r_min, r_max = max(2, size // 20), max(3, size // 11)
    centres: List[tuple] = []
    for _ in range(count):
        for _attempt in range(200):
            r = int(rng.integers(r_min, r_max + 1))
            cx, cy = rng.integers(r + 1, size - r - 1, size=2)
            if all((cx - x) ** 2 + (cy - y) ** 2 >= (r + rr + 2) ** 2 for x, y, rr in centres):
                break
        centres.append((int(cx), int(cy), r))
        colour = rng.uniform(170, 255, 3) if dark_bg else rng.uniform(0, 80, 3)
        colour[rng.integers(3)] *= rng.uniform(0.2, 1.0)  # vary the hue, keep the contrast
        colour = tuple(float(c) for c in colour)
        shape = rng.integers(3)
        if shape == 0:
            cv2.circle(img, (int(cx), int(cy)), r, colour, -1, lineType=cv2.LINE_AA)
        elif shape == 1:
            cv2.rectangle(img, (int(cx - r + 1), int(cy - r + 1)), (int(cx + r - 1), int(cy + r - 1)), colour, -1)
        else:
            pts = np.array([[cx, cy - r], [cx - r, cy + r - 1], [cx + r, cy + r - 1]], np.int32)
            cv2.fillPoly(img, [pts], colour, lineType=cv2.LINE_AA)
    return img


def generate_count_images(num: int, image_size: int = 64, seed: int = 0, split: str = 'train'):
    """``num`` RGB images (N, H, W, 3) uint8 and their counts (N,) int64, uniform over 0..9.

    Each (seed, split) pair has its own seed stream, so splits never share their random draws.
    """
    if split not in SPLIT_STREAMS:
        raise ValueError(f'unknown split {split!r}; expected one of {sorted(SPLIT_STREAMS)}')
    if image_size < 32:
        raise ValueError(f'image_size must be >= 32 so that 9 objects fit, got {image_size}')
    # One child stream per image: image i is the same whatever ``num`` is (a larger split extends a smaller one).
    children = np.random.SeedSequence([int(seed), SPLIT_STREAMS[split]]).spawn(num)
    images = np.empty((num, image_size, image_size, 3), np.uint8)
    counts = np.empty(num, np.int64)
    for i, child in enumerate(children):
        rng = np.random.default_rng(child)
        counts[i] = rng.integers(0, MAX_COUNT + 1)
        images[i] = _draw_image(int(counts[i]), image_size, rng)
    return images, counts.astype(np.int64)


def write_demo_catalog(path: str, num_rows: int, seed: int = 0, image_format: str = 'png', corrupt_rows: int = 0,
                       missing_path_rows: int = 0, image_size: int = 64) -> str:
    """Write a Parquet catalog of generated images: ``id`` (int64), ``image`` (encoded bytes), ``value`` (count).

    ``corrupt_rows`` rows get truncated, undecodable bytes and ``missing_path_rows`` rows get empty bytes (``b''``),
    at seeded random positions, to exercise a scorer's error handling. Their ids are stored in the file's schema
    metadata (``numclip.corrupt_ids``, ``numclip.missing_ids``). Returns ``path``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    ext = {'png': '.png', 'jpg': '.jpg', 'jpeg': '.jpg'}.get(image_format.lower())
    if ext is None:
        raise ValueError(f'image_format must be png or jpeg, got {image_format!r}')
    if corrupt_rows + missing_path_rows > num_rows:
        raise ValueError(f'{corrupt_rows} corrupt + {missing_path_rows} missing rows exceed num_rows={num_rows}')
    images, counts = generate_count_images(num_rows, image_size, seed, 'catalog')
    encoded = []
    for img in images:
        ok, buf = cv2.imencode(ext, img[..., ::-1])
        if not ok:
            raise RuntimeError(f'cannot encode a demo image as {image_format}')
        encoded.append(buf.tobytes())
    bad = np.random.default_rng(np.random.SeedSequence([int(seed), 99])).permutation(num_rows)
    corrupt_ids = np.sort(bad[:corrupt_rows])
    missing_ids = np.sort(bad[corrupt_rows:corrupt_rows + missing_path_rows])
    for i in corrupt_ids:
        encoded[i] = b'not an image' + encoded[i][8:64]  # broken signature and truncated data
    for i in missing_ids:
        encoded[i] = b''
    meta = {b'numclip.corrupt_ids': json.dumps(corrupt_ids.tolist()).encode(),
            b'numclip.missing_ids': json.dumps(missing_ids.tolist()).encode()}
    table = pa.table({'id': pa.array(np.arange(num_rows, dtype=np.int64)),
                      'image': pa.array(encoded, type=pa.binary()),
                      'value': pa.array(counts.astype(np.int64))}).replace_schema_metadata(meta)
    if osp.dirname(path):
        os.makedirs(osp.dirname(path), exist_ok=True)
    pq.write_table(table, path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description='Write a Parquet catalog of generated counting images.')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--rows', type=int, default=1000, help='number of rows')
    parser.add_argument('--name', default='catalog.parquet', help='file name inside --out')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--image-format', default='png', choices=['png', 'jpeg'])
    parser.add_argument('--image-size', type=int, default=64)
    parser.add_argument('--corrupt-rows', type=int, default=0, help='rows with undecodable bytes')
    parser.add_argument('--missing-rows', type=int, default=0, help='rows with empty image bytes')
    args = parser.parse_args(argv)
    path = write_demo_catalog(osp.join(args.out, args.name), args.rows, args.seed, args.image_format,
                              args.corrupt_rows, args.missing_rows, args.image_size)
    print(path)
    return path


if __name__ == '__main__':
    main()
