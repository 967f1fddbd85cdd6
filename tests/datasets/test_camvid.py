"""CamVidDataset on a few images of the real CamVid data (found by the camvid_root fixture)."""
import os.path as osp

import cv2
import numpy as np
import pytest
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS

import mmcals  # noqa: F401  (registrations)
from mmcals.datasets import CamVidDataset

CLASSES = ('Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol', 'Fence', 'Car',
           'Pedestrian', 'Bicyclist')
LOAD = [{'type': 'LoadImageFromFile'}, {'type': 'LoadAnnotations'}]


@pytest.fixture(autouse=True)
def mmseg_scope():
    init_default_scope('mmseg')  # LoadAnnotations must be mmseg's, as in a config


def _pairs(camvid_root, split):
    with open(osp.join(camvid_root, f'{split}.txt')) as f:
        return [line.split() for line in f if line.strip()]


def test_split_lists_classes_palette_and_indices(camvid_root):
    ds = DATASETS.build({'type': 'CamVidDataset', 'data_root': camvid_root,
                         'ann_file': 'train.txt', 'indices': 3, 'pipeline': LOAD})
    assert ds.metainfo['classes'] == CLASSES
    assert ds.metainfo['palette'][3] == [128, 64, 128] and len(ds.metainfo['palette']) == 11
    pairs = _pairs(camvid_root, 'train')
    assert len(ds) == 3
    for i in range(3):
        info = ds.get_data_info(i)
        assert info['img_path'] == osp.join(camvid_root, pairs[i][0])
        assert info['seg_map_path'] == osp.join(camvid_root, pairs[i][1])
    full = CamVidDataset(data_root=camvid_root, ann_file='val.txt', lazy_init=True)
    full.full_init()
    assert len(full) == len(_pairs(camvid_root, 'val'))


def test_unlabelled_is_read_as_ignore_index(camvid_root):
    ds = DATASETS.build({'type': 'CamVidDataset', 'data_root': camvid_root,
                         'ann_file': 'train.txt', 'indices': 2, 'pipeline': LOAD})
    for i in range(2):
        raw = cv2.imread(ds.get_data_info(i)['seg_map_path'], cv2.IMREAD_UNCHANGED)
        assert (raw == 11).any()  # the raw file does hold unlabelled pixels
        loaded = ds[i]['gt_seg_map']
        assert loaded.shape == raw.shape
        np.testing.assert_array_equal(loaded[raw == 11], 255)
        np.testing.assert_array_equal(loaded[raw != 11], raw[raw != 11])
        assert loaded.max() == 255 and loaded[loaded != 255].max() <= 10
    # Keeping the raw value is possible: then 11 stays 11.
    raw_ds = DATASETS.build({'type': 'CamVidDataset', 'data_root': camvid_root,
                             'ann_file': 'train.txt', 'indices': 1, 'pipeline': LOAD,
                             'ignore_index': 11})
    assert (raw_ds[0]['gt_seg_map'] == 11).any() and raw_ds.metainfo['label_map'] is None


def test_folder_listing_and_sequences(camvid_root):
    ds = CamVidDataset(data_root=camvid_root,
                       data_prefix={'img_path': 'train', 'seg_map_path': 'trainannot'})
    names = sorted(osp.basename(p) for p, _ in _pairs(camvid_root, 'train'))
    assert [osp.basename(ds.get_data_info(i)['img_path']) for i in range(len(ds))] == names
    assert osp.dirname(ds.get_data_info(0)['seg_map_path']).endswith('trainannot')

    held = CamVidDataset(data_root=camvid_root, ann_file='train.txt', sequences=['0001TP'])
    rest = CamVidDataset(data_root=camvid_root, ann_file='train.txt',
                         sequences=['0006R0', '0016E5'])
    expected_held = [n for n in names if n.startswith('0001TP_')]
    assert expected_held and len(held) == len(expected_held)
    assert len(held) + len(rest) == len(names)
    rest_by_exclusion = CamVidDataset(data_root=camvid_root, ann_file='train.txt',
                                      exclude_sequences=['0001TP'])
    assert [rest_by_exclusion.get_data_info(i) for i in range(len(rest_by_exclusion))] == \
        [rest.get_data_info(i) for i in range(len(rest))]
    with pytest.raises(ValueError, match=r"sequences=\['Seq05VD'\].*leave no image.*0001TP"):
        CamVidDataset(data_root=camvid_root, ann_file='train.txt', sequences=['Seq05VD'])
    # What --cfg-options makes of 0016E5: a number, reported instead of matching nothing.
    with pytest.raises(ValueError, match='sequences entry 1600000.0 is not a sequence id'):
        CamVidDataset(data_root=camvid_root, ann_file='train.txt', sequences=[1600000.0])


def test_stem_list_written_by_an_experiment(camvid_root, tmp_path):
    stems = [osp.splitext(osp.basename(p))[0] for p, _ in _pairs(camvid_root, 'train')[:2]]
    split = tmp_path / 'calib.txt'
    split.write_text('\n'.join(stems) + '\n')
    ds = CamVidDataset(data_root=camvid_root, ann_file=str(split),
                       data_prefix={'img_path': 'train', 'seg_map_path': 'trainannot'})
    assert [ds.get_data_info(i)['img_path'] for i in range(2)] == [
        osp.join(camvid_root, 'train', s + '.png') for s in stems]


def test_missing_root_names_path_and_layout(tmp_path):
    missing = str(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError) as error:
        CamVidDataset(data_root=missing, ann_file='train.txt')
    message = str(error.value)
    assert missing in message and 'trainannot/' in message and 'valannot/' in message
    assert '\n' not in message
    with pytest.raises(FileNotFoundError, match='split list .*nope.txt'):
        CamVidDataset(data_root=str(tmp_path), ann_file='nope.txt')
