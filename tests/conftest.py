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


# Where the real-data tests look for CamVid, in order. CI sets MMCALS_REQUIRE_REAL_DATA=1 so
# that a missing copy fails the run instead of skipping those tests.
CAMVID_HINT = ('get CamVid (SegNet 11-class version: train/, trainannot/, val/, valannot/, '
               'train.txt, val.txt; see the README) and set CAMVID_ROOT, or put it in data/camvid')


def camvid_candidates() -> list:
    candidates = [os.environ.get('CAMVID_ROOT'), osp.join(REPO, 'data', 'camvid'),
                  osp.join(osp.dirname(REPO), 'shared', 'data', 'camvid')]
    return [c for c in candidates if c]


def find_camvid():
    """The first CamVid copy found (a folder with train.txt), or None."""
    for root in camvid_candidates():
        if osp.isfile(osp.join(root, 'train.txt')):
            return root
    return None


@pytest.fixture(scope='session')
def camvid_root():
    """Real CamVid images for the tests that need them; skipped (or failed in CI) without."""
    root = find_camvid()
    if root is None:
        message = (f'CamVid not found (looked in {", ".join(camvid_candidates())}): '
                   f'{CAMVID_HINT}')
        if os.environ.get('MMCALS_REQUIRE_REAL_DATA') == '1':
            pytest.fail(message + ' [MMCALS_REQUIRE_REAL_DATA=1]')
        pytest.skip(message)
    return root


def pytest_configure(config):
    # Under pytest-xdist (make test: two workers) each worker and its subprocesses get one
    # thread, so the two never oversubscribe the cores; a single process may use two.
    workers = getattr(config.option, 'numprocesses', None)
    os.environ.setdefault('OMP_NUM_THREADS', '1' if workers else '2')

