"""Generated image-caption pairs for pretraining the demo-size CLIP (the 'web data' of the miniature).

Kept apart from the demo's count images (``numclip_mm/datasets/demo.py``), which show a *mix* of filled circles,
squares and triangles of random colours on a noisy gradient:

- shapes: diamonds, stars, crosses, hexagons, rings and ellipses, never a circle, square or triangle;
- layout: every object of an image has the same shape, colour and size class, on a plain (noisy, not gradient)
  background;
- counts 0..12 (the demo's are 0..9).

Captions describe the count with count words ("two", "seven"), digits (a minority, as on the web) and quantity
concepts ("no", "one", "a pair of", "a few", "several", "many", "lots of"), plus the colour, shape, size and
background, in several templates. The concepts overlap between neighbouring counts (4 is "a few" or "several"), as in
everyday language. None of the templates is the demo task's prompt (``numclip_mm/tasks.py``, task 'count':
"a picture of objects, there are <concept>"); :func:`check_not_task_prompt` guards that.

Everything is deterministic in ``seed``: image i draws from its own child seed stream of ``SeedSequence([seed, 7])``
(7: a stream id the demo's splits, 0..3, never use), so a larger set extends a smaller one.
"""
from typing import Dict, List, Sequence

import cv2
import numpy as np

MAX_COUNT = 12
PAIRS_STREAM = 7
SHAPES = ('diamond', 'star', 'cross', 'hexagon', 'ring', 'ellipse')
# name -> RGB; the first group is drawn on dark backgrounds, the second on light ones (strong contrast, as the demo)
BRIGHT_COLOURS = {'red': (235, 50, 40), 'green': (60, 220, 70), 'blue': (70, 120, 255), 'yellow': (245, 230, 60),
                  'white': (245, 245, 245), 'orange': (250, 150, 30), 'pink': (250, 130, 200), 'cyan': (60, 230, 230)}
DARK_COLOURS = {'black': (15, 15, 15), 'dark red': (130, 10, 10), 'dark green': (10, 100, 20),
                'navy': (15, 25, 110), 'purple': (100, 20, 130), 'brown': (100, 60, 20)}
SIZES = {'small': (2, 3), 'medium': (3, 4), 'large': (5, 6)}  # radius range in px at 64 px, scaled with the image
COUNT_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten', 'eleven',
               'twelve')
# Quantity concepts each count may be described by (overlapping between neighbours, as everyday usage).
CONCEPTS = {0: ('no',), 1: ('one', 'a single', 'a lone'), 2: ('a pair of', 'a couple of'), 3: ('a few',),
            4: ('a few', 'several'), 5: ('several',), 6: ('several', 'many'), 7: ('many',),
            8: ('many', 'lots of'), 9: ('lots of', 'a great many'), 10: ('lots of', 'a great many'),
            11: ('lots of', 'a great many'), 12: ('lots of', 'a great many')}
EMPTY_TEMPLATES = ('no shapes, just a {bg} background', 'an empty {bg} background', 'none: a plain {bg} image',
                   'nothing but a {bg} background', 'zero shapes on {bg}', 'no {shape_pl} at all')
TEMPLATES = ('{q} {size} {colour} {shape}', '{q} {colour} {shape} on a {bg} background', '{q} {shape}',
             'a {bg} image with {q} {size} {shape}', '{q} {size} {shape} in {colour}', 'there are {q} {shape} here',
             '{q} {colour} {shape}', '{q} shapes', '{q} things on a {bg} background')
# the share of captions that name the count with a word, with digits, with a quantity concept
QUANTITY_FORMS = dict(word=0.4, digits=0.15, concept=0.45)


def plural(shape: str, count: int) -> str:
    if count == 1:
        return shape
    return shape + ('es' if shape.endswith(('ss', 'x')) else 's')


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if shape == 'diamond':
        t = np.arange(4) * np.pi / 2
        rad = np.array([r, 0.7 * r, r, 0.7 * r])
    elif shape == 'hexagon':
        t = np.arange(6) * np.pi / 3 + angle
        rad = np.full(6, float(r))
    else:  # star: 5 points
        t = np.arange(10) * np.pi / 5 + angle - np.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    return np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], 1).round().astype(np.int32)


def _draw_shape(img: np.ndarray, shape: str, cx: int, cy: int, r: int, colour, rng: np.random.Generator) -> None:
    if shape in ('diamond', 'hexagon', 'star'):
        cv2.fillPoly(img, [_polygon(shape, cx, cy, r, float(rng.uniform(0, np.pi)))], colour, lineType=cv2.LINE_AA)
    elif shape == 'cross':
        w = max(1, r // 3)
        cv2.rectangle(img, (cx - r, cy - w), (cx + r, cy + w), colour, -1)
        cv2.rectangle(img, (cx - w, cy - r), (cx + w, cy + r), colour, -1)
    elif shape == 'ring':
        cv2.circle(img, (cx, cy), r, colour, max(1, r // 3), lineType=cv2.LINE_AA)
    else:  # ellipse, elongated, random orientation
        cv2.ellipse(img, (cx, cy), (r, max(1, int(r * 0.55))), float(rng.uniform(0, 180)), 0, 360, colour, -1,
                    lineType=cv2.LINE_AA)


def draw_pair(count: int, size: int, rng: np.random.Generator) -> (np.ndarray, Dict):
    """One RGB uint8 image of ``count`` same-looking objects and its attributes (count, shape, colour, size, bg)."""
    dark_bg = rng.random() < 0.5
    palette = BRIGHT_COLOURS if dark_bg else DARK_COLOURS
    colour_name = list(palette)[rng.integers(len(palette))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    size_name = list(SIZES)[rng.integers(len(SIZES))]
    if count > 8 and size_name == 'large':
        size_name = 'medium'  # nine or more large objects do not fit apart
    lo, hi = (max(2, round(v * size / 64)) for v in SIZES[size_name])
    bg = rng.uniform(10, 70, 3) if dark_bg else rng.uniform(180, 250, 3)
    img = np.clip(bg + rng.normal(0, 5, size=(size, size, 3)), 0, 255).astype(np.uint8)
    colour = tuple(float(c) for c in np.clip(np.array(palette[colour_name]) + rng.normal(0, 12, 3), 0, 255))
    centres: List[tuple] = []
    for _ in range(count):
        for _attempt in range(100):
            r = int(rng.integers(lo, hi + 1))
            cx, cy = (int(v) for v in rng.integers(r + 1, size - r - 1, size=2))
            if all((cx - x) ** 2 + (cy - y) ** 2 >= (r + rr + 3) ** 2 for x, y, rr in centres):
                break
        centres.append((cx, cy, r))
        _draw_shape(img, shape, cx, cy, r, colour, rng)
    return img, dict(count=count, shape=shape, colour=colour_name, size=size_name, bg='dark' if dark_bg else 'light')


def generate_pairs(num: int, image_size: int = 64, seed: int = 0):
    """``num`` images (N, H, W, 3) uint8 RGB, counts uniform over 0..MAX_COUNT, and their attributes."""
    children = np.random.SeedSequence([int(seed), PAIRS_STREAM]).spawn(num)
    images = np.empty((num, image_size, image_size, 3), np.uint8)
    attributes = []
    for i, child in enumerate(children):
        rng = np.random.default_rng(child)
        images[i], attrs = draw_pair(int(rng.integers(0, MAX_COUNT + 1)), image_size, rng)
        attributes.append(attrs)
    return images, attributes


def caption(attrs: Dict, rng: np.random.Generator) -> str:
    """One caption of an image, drawn from the templates and quantity forms with ``rng``."""
    count, shape = attrs['count'], attrs['shape']
    fields = dict(bg=attrs['bg'], colour=attrs['colour'], size=attrs['size'], shape_pl=plural(shape, 2))
    if count == 0:
        return EMPTY_TEMPLATES[rng.integers(len(EMPTY_TEMPLATES))].format(**fields)
    form = rng.choice(list(QUANTITY_FORMS), p=list(QUANTITY_FORMS.values()))
    if form == 'word':
        q = COUNT_WORDS[count]
    elif form == 'digits':
        q = str(count)
    else:
        q = CONCEPTS[count][rng.integers(len(CONCEPTS[count]))]
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    if count == 1 and template.startswith('there are'):
        template = 'there is {q} {shape} here'
    noun = 'shape' if '{q} shapes' in template else 'thing' if '{q} things' in template else None
    if noun and count == 1:
        template = template.replace(noun + 's', noun)
    return template.format(q=q, shape=plural(shape, count), **fields)


def captions(attributes: Sequence[Dict], rng: np.random.Generator) -> List[str]:
    return [caption(a, rng) for a in attributes]


def check_not_task_prompt(texts: Sequence[str], task='count') -> None:
    """Raise if a caption contains the task's prompt context (the pretraining must not see the task's prompts)."""
    from ..tasks import get_task
    context = get_task(task).context.lower()
    bad = [t for t in texts if context in t.lower()]
    if bad:
        raise ValueError(f'pretraining captions contain the {task!r} task prompt {context!r}: {bad[:3]}')
