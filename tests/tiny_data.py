"""Tiny generated datasets in the Cityscapes layout, for tests that drive the real tools."""
import os
import os.path as osp

import cv2
import numpy as np

NUM_CLASSES = 19


def _scene(rng: np.random.Generator, height: int, width: int):
    """A street-like scene: horizontal bands plus a few rectangles, colour keyed to class."""
    label = np.zeros((height, width), np.uint8)
    bands = np.sort(rng.choice(np.arange(1, height), size=3, replace=False))
    for i, (top, bottom) in enumerate(zip(np.r_[0, bands], np.r_[bands, height])):
        label[top:bottom] = (0, 2, 8, 10)[i]
    for _ in range(3):
        cls = int(rng.integers(11, NUM_CLASSES))
        y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
        h, w = rng.integers(4, height // 2), rng.integers(4, width // 3)
        label[y:y + h, x:x + w] = cls
    palette = (np.arange(NUM_CLASSES)[:, None] * np.array([37, 91, 151]) % 256).astype(np.uint8)
    image = palette[label].astype(np.int16) + rng.integers(-20, 21, (height, width, 3))
    label[:2] = 255  # an ignored border, as Cityscapes has
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_cityscapes(root: str, num_train: int = 4, num_val: int = 2, height: int = 64,
                    width: int = 128, seed: int = 0) -> str:
    """Write ``leftImg8bit/{train,val}`` and ``gtFine/{train,val}`` with ``*_labelTrainIds.png``.

    Returns ``root``. Labels use Cityscapes train ids 0..18 and 255 for ignore.
    """
    rng = np.random.default_rng(seed)
    for split, count in (('train', num_train), ('val', num_val)):
        img_dir = osp.join(root, 'leftImg8bit', split, 'tinycity')
        ann_dir = osp.join(root, 'gtFine', split, 'tinycity')
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(count):
            image, label = _scene(rng, height, width)
            stem = f'tinycity_{i:06d}_000019'
            cv2.imwrite(osp.join(img_dir, f'{stem}_leftImg8bit.png'), image[..., ::-1])
            cv2.imwrite(osp.join(ann_dir, f'{stem}_gtFine_labelTrainIds.png'), label)
    return root


def make_broken_cityscapes(root: str, damage: str) -> str:
    """A 1-train / 1-val tiny set with one damaged file, for the bad-input tests.

    ``damage``: ``'label_200'`` (the training label map holds 200), ``'empty_image'`` or
    ``'truncated_image'`` (the validation image). Returns the damaged file's path.
    """
    make_cityscapes(root, num_train=1, num_val=1)
    split = 'train' if damage == 'label_200' else 'val'
    if damage == 'label_200':
        path = osp.join(root, 'gtFine', split, 'tinycity', 'tinycity_000000_000019_gtFine_'
                        'labelTrainIds.png')
        label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        label[10:20, 10:20] = 200
        cv2.imwrite(path, label)
        return path
    path = osp.join(root, 'leftImg8bit', split, 'tinycity',
                    'tinycity_000000_000019_leftImg8bit.png')
    data = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write(b'' if damage == 'empty_image' else data[:len(data) // 2])
    return path
