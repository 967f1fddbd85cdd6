"""The demo's built-in data: deterministic, imbalanced, ambiguous, and safe to build twice."""
import os

import numpy as np
import pytest

from mmcals.datasets import SyntheticStreetsDataset
from mmcals.datasets.synthetic_streets import CLASSES, PERSON, POLE, ROAD, SIDEWALK, render_scene


def test_same_seed_same_scene_other_seed_other_scene():
    image, label = render_scene((0, 0, 3), (48, 64))
    again_image, again_label = render_scene((0, 0, 3), (48, 64))
    other_image, _ = render_scene((1, 0, 3), (48, 64))
    assert image.shape == (48, 64, 3) and label.shape == (48, 64)
    assert np.array_equal(image, again_image) and np.array_equal(label, again_label)
    assert not np.array_equal(image, other_image)
    assert label.max() < len(CLASSES)


def test_classes_are_imbalanced_and_colours_overlap():
    counts = np.zeros(len(CLASSES))
    road, sidewalk = [], []
    for i in range(20):
        image, label = render_scene((0, 0, i), (96, 128))
        counts += np.bincount(label.ravel(), minlength=len(CLASSES))
        road.append(image[label == ROAD].mean(axis=1))
        sidewalk.append(image[label == SIDEWALK].mean(axis=1))
    share = counts / counts.sum()
    assert share[ROAD] > 0.2 and share[POLE] < 0.02 and share[PERSON] < 0.03
    assert share.max() / share[share > 0].min() > 20
    # Road and sidewalk brightness ranges overlap: colour alone cannot separate them.
    road, sidewalk = np.concatenate(road), np.concatenate(sidewalk)
    overlap = np.mean((road > np.percentile(sidewalk, 25)) & (road < np.percentile(sidewalk, 75)))
    assert overlap > 0.2


def test_dataset_renders_once_and_reuses_the_cache(tmp_path):
    root = tmp_path / 'streets'
    train = SyntheticStreetsDataset(data_root=str(root), split='train', num_train=5, num_val=3,
                                    image_size=(32, 48), pipeline=[])
    val = SyntheticStreetsDataset(data_root=str(root), split='val', num_train=5, num_val=3,
                                  image_size=(32, 48), pipeline=[])
    assert len(train) == 5 and len(val) == 3
    assert train.metainfo['classes'] == CLASSES
    stamp = os.path.getmtime(root / 'img_dir' / 'train' / 'train_0000.png')
    SyntheticStreetsDataset(data_root=str(root), num_train=5, num_val=3, image_size=(32, 48),
                            pipeline=[])
    assert os.path.getmtime(root / 'img_dir' / 'train' / 'train_0000.png') == stamp
    # Other parameters rebuild the cache instead of mixing two sets.
    bigger = SyntheticStreetsDataset(data_root=str(root), num_train=6, num_val=3,
                                     image_size=(32, 48), pipeline=[])
    assert len(bigger) == 6
    assert not [p for p in os.listdir(tmp_path) if p.startswith('.synthetic_streets-')]


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        SyntheticStreetsDataset(data_root=str(tmp_path / 's'), split='test', pipeline=[])
