"""CheckSegLabels and CheckSampleFiles: bad samples are named; good ones pass untouched."""
import cv2
import numpy as np
import pytest

from mmcals.datasets import CheckSampleFiles, CheckSegLabels
from mmcals.datasets.transforms import BadImageError, BadLabelError


def test_labels_outside_the_classes_are_named_with_their_file():
    check = CheckSegLabels(num_classes=19, ignore_index=255)
    good = np.array([[0, 18, 255]], np.uint8)
    assert check({'gt_seg_map': good, 'seg_map_path': 'a.png'})['gt_seg_map'] is good
    with pytest.raises(BadLabelError, match=r'b\.png holds value\(s\) 19, 200 outside the 19'):
        check({'gt_seg_map': np.array([[0, 200, 19, 255]], np.uint8), 'seg_map_path': 'b.png'})
    with pytest.raises(ValueError, match='num_classes'):
        CheckSegLabels(num_classes=0)


def test_empty_and_truncated_png_files_are_named(tmp_path):
    good = tmp_path / 'good.png'
    cv2.imwrite(str(good), np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8))
    data = good.read_bytes()
    (tmp_path / 'empty.png').write_bytes(b'')
    (tmp_path / 'cut.png').write_bytes(data[:len(data) // 2])
    check = CheckSampleFiles()
    sample = {'img_path': str(good), 'seg_map_path': str(good)}
    assert check(dict(sample)) == sample
    with pytest.raises(BadImageError, match='empty.png is empty'):
        check({'img_path': str(tmp_path / 'empty.png')})
    with pytest.raises(BadImageError, match='cut.png is truncated'):
        check({'img_path': str(good), 'seg_map_path': str(tmp_path / 'cut.png')})
