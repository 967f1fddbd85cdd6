"""A small street-like segmentation set generated from a seed: the demo's built-in data.

Nothing is downloaded: the images are rendered on first use into ``data_root`` (a cache
folder) and reused afterwards. The scenes are built so that a model trained with
cross-entropy has something to be over-confident about:

- imbalanced classes: road, building and sky cover most pixels; poles and people a few;
- classes whose colours overlap (road / sidewalk, building / pole, person / anything),
  under per-image lighting and shadows, with sensor noise and texture;
- noisy annotation boundaries: the label map is drawn from a slightly displaced copy of the
  scene geometry, and a small share of object instances is labelled as a confusable class,
  as happens with real annotators;
- a validation split recorded on "another day", as real validation sets come from other
  sequences or cities: a wider range of exposure, a colour cast, haze and more sensor noise.
"""
import json
import os
import os.path as osp
import shutil
import tempfile
from typing import Sequence, Tuple

import cv2
import numpy as np
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

CLASSES = ('sky', 'building', 'road', 'sidewalk', 'vegetation', 'car', 'pole', 'person')
PALETTE = [[70, 130, 180], [70, 70, 70], [128, 64, 128], [244, 35, 232], [107, 142, 35],
           [0, 0, 142], [153, 153, 153], [220, 20, 60]]
SKY, BUILDING, ROAD, SIDEWALK, VEGETATION, CAR, POLE, PERSON = range(len(CLASSES))

# Mean RGB colour and spread of each class's surface; overlaps are deliberate.
_COLOURS = {
    SKY: ((150, 175, 205), 25),
    BUILDING: ((125, 112, 105), 35),
    ROAD: ((105, 103, 108), 22),
    SIDEWALK: ((128, 120, 122), 24),
    VEGETATION: ((80, 115, 60), 30),
    CAR: ((110, 100, 110), 70),
    POLE: ((115, 110, 108), 25),
    PERSON: ((120, 100, 95), 60),
}
# Instance-level annotation confusions: (true class, labelled as, probability).
_LABEL_SWAPS = ((POLE, BUILDING, 0.15), (PERSON, SIDEWALK, 0.1), (SIDEWALK, ROAD, 0.1))
# Recording conditions per split: exposure range, colour cast (RGB gain spread), haze
# (blend towards grey, maximum), sensor noise (std of 8-bit values).
_CONDITIONS = {
    'train': dict(exposure=(0.75, 1.2), cast=0.03, haze=0.0, noise=9.0),
    'val': dict(exposure=(0.55, 1.3), cast=0.1, haze=0.35, noise=14.0),
}
_VERSION = 2  # bump when the renderer changes, so caches are rebuilt


def _smooth_noise(rng, height, width, scale, amplitude):
    small = rng.normal(0, 1, (max(2, height // scale), max(2, width // scale)))
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC) * amplitude


def _layout(rng, height: int, width: int) -> list:
    """Scene geometry as a list of (class, kind, params), painted in order."""
    shapes = [(SKY, 'rect', (0, 0, width, height))]
    horizon = int(height * rng.uniform(0.38, 0.52))
    x = 0
    while x < width:  # a skyline of buildings
        w = int(rng.uniform(0.12, 0.3) * width)
        top = int(horizon - rng.uniform(0.1, 0.35) * height)
        shapes.append((BUILDING, 'rect', (x, max(0, top), x + w, horizon)))
        x += w
    for _ in range(rng.integers(1, 4)):  # trees in front of buildings
        cx, cy = rng.uniform(0, width), horizon - rng.uniform(0, 0.2) * height
        shapes.append((VEGETATION, 'ellipse', (cx, cy, rng.uniform(0.06, 0.16) * width,
                                               rng.uniform(0.06, 0.16) * height)))
    vanish = width * rng.uniform(0.35, 0.65)
    shapes.append((SIDEWALK, 'poly', [(0, horizon), (width, horizon), (width, height),
                                      (0, height)]))
    spread = rng.uniform(0.25, 0.45)
    shapes.append((ROAD, 'poly', [(vanish - 4, horizon), (vanish + 4, horizon),
                                  (width * (1 - spread) + width * 0.5, height),
                                  (width * spread - width * 0.5, height)]))
    for _ in range(rng.integers(0, 4)):  # cars, larger when nearer
        depth = rng.uniform(0.1, 1.0)
        cy = horizon + depth * (height - horizon) * 0.8
        w, h = (0.08 + 0.22 * depth) * width, (0.05 + 0.14 * depth) * height
        cx = vanish + rng.uniform(-0.6, 0.6) * depth * width * 0.5
        shapes.append((CAR, 'rect', (int(cx - w / 2), int(cy - h), int(cx + w / 2), int(cy))))
    for _ in range(rng.integers(1, 4)):  # poles
        px = int(rng.uniform(0, width))
        bottom = int(horizon + rng.uniform(0.1, 0.5) * (height - horizon))
        top = int(bottom - rng.uniform(0.3, 0.6) * height)
        shapes.append((POLE, 'rect', (px, max(0, top), px + max(1, int(width * 0.012)), bottom)))
    for _ in range(rng.integers(0, 4)):  # people on the sidewalk
        depth = rng.uniform(0.2, 1.0)
        feet = horizon + depth * (height - horizon) * 0.9
        h, w = (0.08 + 0.18 * depth) * height, (0.02 + 0.04 * depth) * width
        cx = rng.choice([rng.uniform(0, 0.25), rng.uniform(0.75, 1.0)]) * width
        shapes.append((PERSON, 'ellipse', (cx, feet - h / 2, w / 2, h / 2)))
    return shapes


def _paint(shapes, height, width, offset=(0.0, 0.0), labels=None) -> np.ndarray:
    canvas = np.zeros((height, width), np.uint8)
    dx, dy = offset
    for index, (cls, kind, params) in enumerate(shapes):
        value = int(labels[index]) if labels is not None else cls
        if kind == 'rect':
            x0, y0, x1, y1 = params
            cv2.rectangle(canvas, (int(x0 + dx), int(y0 + dy)), (int(x1 + dx) - 1, int(y1 + dy)),
                          value, thickness=-1)
        elif kind == 'ellipse':
            cx, cy, ax, ay = params
            cv2.ellipse(canvas, (int(cx + dx), int(cy + dy)), (max(1, int(ax)), max(1, int(ay))),
                        0, 0, 360, value, thickness=-1)
        else:
            points = np.array([(x + dx, y + dy) for x, y in params], np.int32)
            cv2.fillPoly(canvas, [points], value)
    return canvas


def render_scene(seed: Sequence[int], size: Tuple[int, int],
                 conditions: str = 'train') -> Tuple[np.ndarray, np.ndarray]:
    """One RGB image (H, W, 3) uint8 and its label map (H, W) uint8 for ``seed``, recorded
    under the ``conditions`` of a split (``'train'`` or ``'val'``)."""
    height, width = size
    recording = _CONDITIONS[conditions]
    rng = np.random.default_rng(list(seed))
    shapes = _layout(rng, height, width)
    truth = _paint(shapes, height, width)

    image = np.zeros((height, width, 3), np.float32)
    for cls, (mean, spread) in _COLOURS.items():
        mask = truth == cls
        if not mask.any():
            continue
        # Per-image variation: mostly brightness, a little hue (cars and people: any colour).
        hue_spread = spread if cls in (CAR, PERSON) else spread * 0.3
        tint = np.asarray(mean, np.float32) + rng.normal(0, spread) + rng.normal(0, hue_spread, 3)
        texture = _smooth_noise(rng, height, width, scale=4, amplitude=spread * 0.5)
        image[mask] = tint + texture[mask, None]
    lighting = 1.0 + _smooth_noise(rng, height, width, scale=16, amplitude=0.18)
    exposure = rng.uniform(*recording['exposure'])
    cast = 1.0 + rng.normal(0, recording['cast'], 3)
    image = image * lighting[..., None] * exposure * cast
    haze = rng.uniform(0, recording['haze'])
    image = image * (1 - haze) + 170.0 * haze
    image += rng.normal(0, recording['noise'], image.shape)
    image = cv2.GaussianBlur(image, (3, 3), 0.8)

    swaps = np.array([cls for cls, _, _ in shapes])
    for true_cls, as_cls, prob in _LABEL_SWAPS:
        flip = (swaps == true_cls) & (rng.random(len(shapes)) < prob)
        swaps[flip] = as_cls
    label = _paint(shapes, height, width, offset=tuple(rng.uniform(-1.5, 1.5, 2)), labels=swaps)
    return np.clip(image, 0, 255).astype(np.uint8), label


def generate(data_root: str, splits: dict, size: Tuple[int, int], seed: int) -> None:
    """Render every split into ``data_root`` unless a matching cache is already there.

    ``splits`` maps a split name to its image count. Written to a temporary folder and
    renamed into place, so concurrent ranks and interrupted runs never see a half-built set.
    """
    spec = dict(version=_VERSION, splits=splits, size=list(size), seed=seed)
    marker = osp.join(data_root, 'synthetic_streets.json')
    if osp.isfile(marker):
        with open(marker) as f:
            if json.load(f) == spec:
                return
        shutil.rmtree(data_root)
    parent = osp.dirname(osp.abspath(data_root))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix='.synthetic_streets-', dir=parent)
    for split_index, (split, count) in enumerate(sorted(splits.items())):
        for folder in ('img_dir', 'ann_dir'):
            os.makedirs(osp.join(staging, folder, split))
        for i in range(count):
            image, label = render_scene((seed, split_index, i), size, conditions=split)
            name = f'{split}_{i:04d}.png'
            cv2.imwrite(osp.join(staging, 'img_dir', split, name), image[..., ::-1])
            cv2.imwrite(osp.join(staging, 'ann_dir', split, name), label)
    with open(osp.join(staging, 'synthetic_streets.json'), 'w') as f:
        json.dump(spec, f)
    try:
        os.rename(staging, data_root)
    except OSError:  # another process finished first with the same content
        shutil.rmtree(staging, ignore_errors=True)


@DATASETS.register_module()
class SyntheticStreetsDataset(BaseSegDataset):
    """Street-like scenes rendered deterministically from ``seed`` (see module docstring).

    Args:
        data_root (str): Cache folder; rendered there on first use.
        split (str): ``'train'`` or ``'val'``. Default: ``'train'``.
        num_train (int): Images in the train split. Default: 40.
        num_val (int): Images in the val split. Default: 20.
        image_size (tuple[int, int]): (height, width). Default: (96, 128).
        seed (int): Seed of the whole set. Default: 0.
        **kwargs: Passed to :class:`mmseg.datasets.BaseSegDataset` (pipeline, ...).
    """
    METAINFO = dict(classes=CLASSES, palette=PALETTE)
    GENERATES_DATA = True  # tools skip the "data_root must exist" check for this dataset

    def __init__(self, data_root: str, split: str = 'train', num_train: int = 40,
                 num_val: int = 20, image_size: Tuple[int, int] = (96, 128), seed: int = 0,
                 **kwargs) -> None:
        splits = dict(train=num_train, val=num_val)
        if split not in splits:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        generate(data_root, splits, tuple(image_size), seed)
        super().__init__(
            data_root=data_root,
            data_prefix=dict(img_path=f'img_dir/{split}', seg_map_path=f'ann_dir/{split}'),
            img_suffix='.png', seg_map_suffix='.png', reduce_zero_label=False, **kwargs)
