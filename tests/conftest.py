import os
import os.path as osp
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

from tiny_data import make_cityscapes  # noqa: E402


@pytest.fixture(scope='session')
def tiny_cityscapes(tmp_path_factory):
    """A generated 4-train / 2-val Cityscapes-layout dataset (64x128)."""
    return make_cityscapes(str(tmp_path_factory.mktemp('cityscapes')))


@pytest.fixture(scope='session')
def repo_root():
    return REPO


@pytest.fixture(scope='session')
def camvid_root():
    root = osp.join(osp.dirname(REPO), 'shared', 'data', 'camvid')
    if not osp.isdir(root):
        pytest.fail(f'CamVid not found at {root}: tests expect ../shared/data/camvid beside '
                    'the checkout')
    return root


def pytest_configure(config):
    os.environ.setdefault('OMP_NUM_THREADS', '2')

