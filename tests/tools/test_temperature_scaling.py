"""tools/analysis/temperature_scaling.py: the fit against grid searches, the pixel sample, and
the tool end to end on a tiny checkpoint."""
import glob
import json
import math
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

import mmcals  # noqa: F401  (registrations, stack fixes)
from mmcals.evaluation import temperature_scaling

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(REPO, 'tools', 'analysis', 'temperature_scaling.py')
TINY_CONFIG = osp.join(REPO, 'tests', 'configs', 'deeplabv3_r18_tiny_cityscapes.py')


@pytest.fixture(scope='module')
def ts():
    """The tool's fit and evaluation, as its script imports them."""
    return temperature_scaling


def grid_nll(logits, labels, log_ts):
    z = logits.double()
    return np.array([float(torch.nn.functional.cross_entropy(z / math.exp(t), labels))
                     for t in log_ts])


def _synthetic(seed, sharpness, n=4000, classes=4):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=gen)
    signal = torch.nn.functional.one_hot(labels, classes).double()
    noise = torch.randn(n, classes, generator=gen, dtype=torch.float64)
    return sharpness * (signal + noise), labels


@pytest.mark.parametrize('sharpness', [0.3, 1.0, 6.0])  # under-, roughly, over-confident
def test_fit_minimises_nll_against_grid(ts, sharpness):
    logits, labels = _synthetic(0, sharpness)
    temperature, at_bound = ts.fit_temperature(logits, labels)
    assert not at_bound
    log_ts = np.linspace(math.log(0.02), math.log(50.0), 4001)
    values = grid_nll(logits, labels, log_ts)
    best = int(values.argmin())
    step = log_ts[1] - log_ts[0]
    assert abs(math.log(temperature) - log_ts[best]) <= step
    fitted = grid_nll(logits, labels, [math.log(temperature)])[0]
    assert fitted <= values.min() + 1e-12
    assert ts.nll(logits.float(), labels, temperature) == pytest.approx(fitted, rel=1e-6)


def test_fit_reports_a_minimum_at_the_search_bound(ts):
    labels = torch.arange(6) % 3
    logits = torch.nn.functional.one_hot(labels, 3).double() * 4  # every pixel correct
    temperature, at_bound = ts.fit_temperature(logits, labels)
    assert at_bound and temperature == pytest.approx(0.01)
    with pytest.raises(ValueError, match='no valid pixel'):
        ts.fit_temperature(logits[:0], labels[:0])


def _image(index, size=100, classes=3):
    logits = torch.full((classes, 1, size), float(index))
    labels = torch.full((1, size), index % classes)
    labels[0, ::10] = 255  # 10 ignored pixels per image
    return logits, labels


def test_pixel_sample_caps_memory_and_keeps_valid_pixels(ts):
    sample = ts.PixelSample(capacity=150, ignore_index=255, seed=0)
    for i in range(10):
        sample.add(*_image(i))
    assert sample.seen == 900 and len(sample.labels) == 150 == len(sample.logits)
    assert (sample.labels != 255).all()
    # logits of image i are all i: a kept pixel's logits match its image's labels
    assert torch.equal(sample.labels, sample.logits[:, 0].long() % 3)
    big = ts.PixelSample(capacity=10_000, seed=0)
    for i in range(10):
        big.add(*_image(i))
    assert len(big.labels) == 900  # below the cap every valid pixel is kept
    counts = np.bincount(big.logits[:, 0].long().numpy(), minlength=10)
    assert (counts == 90).all()


def test_pixel_sample_is_uniform_over_images(ts):
    """Over many seeds each of 10 equal images gets a tenth of the sample on average."""
    totals = np.zeros(10)
    seeds = 60
    for seed in range(seeds):
        sample = ts.PixelSample(capacity=180, seed=seed)
        for i in range(10):
            sample.add(*_image(i))
        totals += np.bincount(sample.logits[:, 0].long().numpy(), minlength=10)
    # 18 per image expected; the mean over 60 seeds has a standard deviation of about 0.5.
    assert np.abs(totals / seeds - 18).max() < 2.5


def test_confusion_matrix_miou(ts):
    labels = torch.tensor([[0, 0, 1, 1, 2, 255]])
    logits = torch.nn.functional.one_hot(torch.tensor([[0, 1, 1, 1, 0, 2]]), 4).permute(2, 0, 1)
    matrix = ts.ConfusionMatrix(4)
    matrix.update(logits.float(), labels)
    # class 0: tp 1, union 3; class 1: tp 2, union 3; class 2: tp 0, union 1; class 3 absent
    assert matrix.miou() == pytest.approx(100 * (1 / 3 + 2 / 3 + 0) / 3)


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    """A freshly initialised R18 model of the tiny config whose decode head favours class 0 (a
    road band, about a third of the pixels) with a large bias: better than chance and
    over-confident, so the optimal temperature is above 1 and inside the searched range."""
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    torch.manual_seed(0)
    cfg = Config.fromfile(TINY_CONFIG)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():
        model.decode_head.conv_seg.bias[0] = 6.0
    path = str(tmp_path_factory.mktemp('ckpt') / 'tiny.pth')
    from mmseg.datasets import CityscapesDataset
    meta = {'dataset_meta': dict(CityscapesDataset.METAINFO)}
    torch.save({'state_dict': model.state_dict(), 'meta': meta}, path)
    return path


def _data_options(root):
    options = []
    for loader in ('train', 'val', 'test'):
        options.append(f'{loader}_dataloader.dataset.data_root={root}')
    return options


def _run(args, cwd=REPO):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, TOOL, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def _direct_logits(root, checkpoint):
    """Logits and labels of the tiny val images through mmseg's own inference API."""
    from mmseg.apis import inference_model, init_model
    model = init_model(TINY_CONFIG, checkpoint, device='cpu')
    logits, labels = [], []
    for label_path in sorted(glob.glob(osp.join(root, 'gtFine', 'val', '*', '*.png'))):
        image_path = label_path.replace(osp.join(root, 'gtFine'), osp.join(root, 'leftImg8bit'))
        image_path = image_path.replace('_gtFine_labelTrainIds', '_leftImg8bit')
        result = inference_model(model, image_path)
        z = result.seg_logits.data
        y = torch.from_numpy(cv2.imread(label_path, cv2.IMREAD_UNCHANGED)).long()
        valid = y != 255
        logits.append(z[:, valid].t())
        labels.append(y[valid])
    return torch.cat(logits), torch.cat(labels)


def test_tool_end_to_end(tiny_cityscapes, tiny_checkpoint, tmp_path, ts):
    work_dir = tmp_path / 'ts'
    result = _run([TINY_CONFIG, tiny_checkpoint, '--fit-split', 'val', '--eval-split', 'val',
                   '--work-dir', str(work_dir), '--device', 'cpu',
                   '--cfg-options', *_data_options(tiny_cityscapes)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert '| NLL |' in result.stdout and 'optimistic' in result.stderr
    with open(work_dir / 'temperature_scaling.json') as f:
        report = json.load(f)
    with open(work_dir / 'calibration.json') as f:
        calibration = json.load(f)

    logits, labels = _direct_logits(tiny_cityscapes, tiny_checkpoint)
    temperature = report['temperature']
    fit = report['fit']
    assert fit['pixels_seen'] == fit['pixels_used'] == len(labels)
    assert not fit['at_search_bound'] and temperature > 1.0  # over-confident model
    # The fitted temperature minimises the NLL of the fit pixels: compare with a grid search.
    log_ts = np.linspace(math.log(0.05), math.log(20.0), 801)
    values = grid_nll(logits, labels, log_ts)
    assert grid_nll(logits, labels, [math.log(temperature)])[0] <= values.min() + 1e-9
    assert abs(math.log(temperature) - log_ts[values.argmin()]) <= log_ts[1] - log_ts[0]
    # Metrics before and after, on the same pixels, against direct computations.
    before, after = report['eval']['before'], report['eval']['after']
    assert before['num_pixels'] == after['num_pixels'] == len(labels)
    direct_before = grid_nll(logits, labels, [0.0])[0] * 100
    direct_after = grid_nll(logits, labels, [math.log(temperature)])[0] * 100
    assert before['metrics']['NLL'] == pytest.approx(direct_before, rel=1e-4)
    assert after['metrics']['NLL'] == pytest.approx(direct_after, rel=1e-4)
    assert after['metrics']['NLL'] < before['metrics']['NLL']
    assert before['metrics']['pixel_accuracy'] == after['metrics']['pixel_accuracy']
    assert fit['nll_after'] == pytest.approx(direct_after / 100, rel=1e-5)
    # The scaled model's calibration.json follows the metric's format, for compare_calibration.
    assert calibration == after and len(calibration['classes']) == 19
    for when in ('before', 'after'):
        assert (work_dir / f'reliability_{when}.png').read_bytes()[:4] == b'\x89PNG'
    matrix = ts.ConfusionMatrix(19)
    matrix.update(logits.t()[:, None], labels[None])
    assert report['eval']['mIoU'] == pytest.approx(matrix.miou())


def test_tool_subsamples_the_fit_split(tiny_cityscapes, tiny_checkpoint, tmp_path):
    work_dir = tmp_path / 'ts'
    result = _run([TINY_CONFIG, tiny_checkpoint, '--fit-split', 'train', '--eval-split', 'val',
                   '--max-fit-pixels', '1000', '--work-dir', str(work_dir), '--device', 'cpu',
                   '--cfg-options', *_data_options(tiny_cityscapes)])
    assert result.returncode == 0, result.stderr[-3000:]
    with open(work_dir / 'temperature_scaling.json') as f:
        fit = json.load(f)['fit']
    # 4 train images of 64x128 with 2 ignored rows each, read without augmentation.
    assert fit['split'] == 'train' and fit['pixels_used'] == 1000
    assert fit['pixels_seen'] == 4 * 62 * 128
    assert 'optimistic' not in result.stderr


def test_tool_errors(tiny_cityscapes, tiny_checkpoint, tmp_path):
    missing = _run([TINY_CONFIG, str(tmp_path / 'none.pth'), '--work-dir', str(tmp_path)])
    assert missing.returncode == 2
    assert 'none.pth does not exist' in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    no_split = _run([TINY_CONFIG, tiny_checkpoint, '--work-dir', str(tmp_path),
                     '--cfg-options', *_data_options(tiny_cityscapes), 'test_dataloader=None'])
    assert no_split.returncode == 2 and 'no test_dataloader' in no_split.stderr
    no_data = _run([TINY_CONFIG, tiny_checkpoint, '--work-dir', str(tmp_path),
                    '--cfg-options', *_data_options(tmp_path / 'nowhere')])
    assert no_data.returncode == 2 and 'nowhere' in no_data.stderr
