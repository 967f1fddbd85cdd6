"""tools/analysis/temperature_scaling.py end to end on a tiny checkpoint: the fitted temperature
against a direct float64 minimisation, the written config through tools/test.py and
mmseg.apis.inference_model, per-class scaling, and the refusals."""
import glob
import json
import math
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from inprocess_tool import run_tool_here
from mmengine.config import Config
from tooling import REPO, cityscapes_options, run_tool

import mmcals  # noqa: F401  (registrations, stack fixes)

TOOL = 'analysis/temperature_scaling.py'
TINY_CONFIG = osp.join(REPO, 'tests', 'configs', 'deeplabv3_r18_tiny_cityscapes.py')
ENV = {'OMP_NUM_THREADS': '1'}
# The tool's logits come from another process than the direct ones here; the same float32
# convolutions with another thread count may differ in the last bits, which moves the
# minimiser by about as much (relative 1e-7): compared at 1e-5.
ACROSS_PROCESSES = 1e-5


def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _options(root):
    """Data roots, and the test loader on the 4 train images: the tiny config's test loader
    is its val loader, which the fit would share."""
    return [*cityscapes_options(root),
            'test_dataloader.dataset.data_prefix.img_path=leftImg8bit/train',
            'test_dataloader.dataset.data_prefix.seg_map_path=gtFine/train']


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    """A freshly initialised R18 model of the tiny config whose decode head favours class 0 (a
    road band, about a third of the pixels) with a large bias: better than chance and
    over-confident, so the optimal temperature is above 1 and inside the searched range."""
    from mmseg.datasets import CityscapesDataset
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(TINY_CONFIG).model)
    model.init_weights()
    with torch.no_grad():
        model.decode_head.conv_seg.bias[0] = 6.0
    path = str(tmp_path_factory.mktemp('ckpt') / 'tiny.pth')
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': dict(CityscapesDataset.METAINFO)}}, path)
    return path


def _image_label_pairs(root, split):
    for label in sorted(glob.glob(osp.join(root, 'gtFine', split, '*', '*.png'))):
        image = label.replace(osp.join(root, 'gtFine'), osp.join(root, 'leftImg8bit'))
        yield image.replace('_gtFine_labelTrainIds', '_leftImg8bit'), label


def _direct_logits(config, checkpoint, root, split):
    """Valid pixels' logits (N, C) and labels (N,) of a split through mmseg's inference API."""
    from mmseg.apis import inference_model, init_model
    model = init_model(config, checkpoint, device='cpu')
    logits, labels = [], []
    for image, label in _image_label_pairs(root, split):
        z = inference_model(model, image).seg_logits.data
        y = torch.from_numpy(cv2.imread(label, cv2.IMREAD_UNCHANGED)).long()
        logits.append(z[:, y != 255].t())
        labels.append(y[y != 255])
    return torch.cat(logits), torch.cat(labels)


def _nll(logits, labels, beta):
    z = logits.double() * beta
    return (torch.logsumexp(z, 1) - z.gather(1, labels[:, None])[:, 0]).mean()


def _golden_log_t(logits, labels):
    """argmin over log T of the float64 NLL, by golden-section search on [log 0.01, log 100]."""
    ratio = (math.sqrt(5) - 1) / 2
    f = lambda t: float(_nll(logits, labels, math.exp(-t)))  # noqa: E731
    a, b = math.log(0.01), math.log(100.0)
    for _ in range(200):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if f(c) < f(d):
            b = d
        else:
            a = c
    return 0.5 * (a + b)


@pytest.fixture(scope='module')
def scalar_run(tiny_cityscapes, tiny_checkpoint, tmp_path_factory):
    """The tool with its default splits: fit on val, report on test (the train images)."""
    work_dir = tmp_path_factory.mktemp('ts')
    result = _ok(run_tool(TOOL, TINY_CONFIG, tiny_checkpoint, '--work-dir', work_dir,
                          '--device', 'cpu', '--cfg-options', *_options(tiny_cityscapes),
                          env=ENV))
    report = json.loads((work_dir / 'temperature_scaling.json').read_text())
    return dict(work_dir=work_dir, result=result, report=report,
                config=str(work_dir / 'deeplabv3_r18_tiny_cityscapes_ts.py'))


def test_fitted_temperature_is_the_direct_float64_minimiser(scalar_run, tiny_cityscapes,
                                                             tiny_checkpoint):
    report, work_dir = scalar_run['report'], scalar_run['work_dir']
    log = scalar_run['result'].stdout + scalar_run['result'].stderr
    assert 'Iter(test) [2/2]' in log and 'Iter(test) [4/4]' in log  # both test loops ran
    assert '| NLL |' in scalar_run['result'].stdout
    logits, labels = _direct_logits(TINY_CONFIG, tiny_checkpoint, tiny_cityscapes, 'val')
    temperature, fit = report['temperature'], report['fit']
    assert fit['split'] == 'val' and fit['pixels_seen'] == fit['pixels_used'] == len(labels)
    assert not fit['at_search_bound'] and temperature > 1.0  # an over-confident model
    assert math.log(temperature) == pytest.approx(_golden_log_t(logits, labels),
                                                  abs=ACROSS_PROCESSES)
    assert fit['nll_before'] == pytest.approx(float(_nll(logits, labels, 1.0)),
                                              rel=ACROSS_PROCESSES)
    assert fit['nll_after'] == pytest.approx(float(_nll(logits, labels, 1 / temperature)),
                                             rel=ACROSS_PROCESSES)
    # The report on the test loader's 4 train images, before and after, against direct NLLs.
    test_logits, test_labels = _direct_logits(TINY_CONFIG, tiny_checkpoint, tiny_cityscapes,
                                              'train')
    before, after = report['eval']['before'], report['eval']['after']
    assert report['eval']['split'] == 'test'
    assert before['num_pixels'] == after['num_pixels'] == len(test_labels) == 4 * 62 * 128
    for summary, beta in ((before, 1.0), (after, 1 / temperature)):
        assert summary['metrics']['NLL'] == pytest.approx(
            100 * float(_nll(test_logits, test_labels, beta)), rel=1e-4)
    assert after['metrics']['NLL'] < before['metrics']['NLL']
    assert before['metrics']['pixel_accuracy'] == after['metrics']['pixel_accuracy']
    # Outputs: the scaled model's calibration.json, the diagrams, the config.
    assert json.loads((work_dir / 'calibration.json').read_text()) == after
    for when in ('before', 'after'):
        assert (work_dir / f'reliability_{when}.png').read_bytes()[:4] == b'\x89PNG'
    assert not list(work_dir.glob('*.tmp')) and not list(work_dir.glob('.*.tmp'))
    written = Config.fromfile(scalar_run['config'])
    assert written.model.type == 'TemperatureScaledSegmentor'
    assert written.model.segmentor_type == 'EncoderDecoder'
    assert written.model.temperature == temperature  # repr round-trips the float exactly
    assert report['scaled_config'] == scalar_run['config']


def test_tools_test_on_the_written_config_reproduces_the_after_numbers(scalar_run,
                                                                      tiny_cityscapes,
                                                                      tiny_checkpoint,
                                                                      tmp_path):
    _ok(run_tool('test.py', scalar_run['config'], tiny_checkpoint, '--work-dir', tmp_path,
                 '--cfg-options', *_options(tiny_cityscapes), env=ENV))
    (calibration,) = glob.glob(str(tmp_path / '*' / 'calibration' / 'calibration.json'))
    assert json.loads(open(calibration).read()) == scalar_run['report']['eval']['after']
    (scores,) = [p for p in glob.glob(str(tmp_path / '*' / '*.json'))
                 if osp.basename(p) == osp.basename(osp.dirname(p)) + '.json']
    assert json.loads(open(scores).read())['mIoU'] == scalar_run['report']['eval']['mIoU']


def test_inference_model_on_the_written_config_returns_scaled_logits(scalar_run,
                                                                    tiny_cityscapes,
                                                                    tiny_checkpoint):
    from mmseg.apis import inference_model, init_model
    temperature = scalar_run['report']['temperature']
    plain = init_model(TINY_CONFIG, tiny_checkpoint, device='cpu')
    scaled = init_model(scalar_run['config'], tiny_checkpoint, device='cpu')
    assert list(scaled.state_dict()) == list(plain.state_dict())
    image, _ = next(_image_label_pairs(tiny_cityscapes, 'val'))
    raw, out = inference_model(plain, image), inference_model(scaled, image)
    expected = (raw.seg_logits.data.numpy().astype(np.float64) / temperature).astype(
        np.float32)
    assert np.array_equal(out.seg_logits.data.numpy(), expected)
    assert torch.equal(out.pred_sem_seg.data, raw.pred_sem_seg.data)


def test_per_class_temperatures_meet_the_optimality_conditions(tiny_cityscapes,
                                                               tiny_checkpoint, tmp_path):
    """--per-class, fitted on the train split (read through the test pipeline), reported on
    val: the temperatures satisfy the box-constrained optimality conditions of the direct
    float64 NLL, and inference_model on the written config divides by them."""
    from mmseg.apis import inference_model, init_model
    _ok(run_tool(TOOL, TINY_CONFIG, tiny_checkpoint, '--per-class', '--fit-split', 'train',
                 '--eval-split', 'val', '--work-dir', tmp_path, '--device', 'cpu',
                 '--cfg-options', *cityscapes_options(tiny_cityscapes), env=ENV))
    report = json.loads((tmp_path / 'temperature_scaling.json').read_text())
    temperatures, fit = report['temperature'], report['fit']
    assert report['per_class'] and len(temperatures) == 19
    logits, labels = _direct_logits(TINY_CONFIG, tiny_checkpoint, tiny_cityscapes, 'train')
    assert fit['pixels_seen'] == fit['pixels_used'] == len(labels) == 4 * 62 * 128
    names = report['eval']['after']['classes']
    present = set(labels.tolist())
    assert fit['classes_without_pixels'] == [n for k, n in enumerate(names) if k not in present]
    beta = (1 / torch.tensor(temperatures, dtype=torch.float64)).requires_grad_()
    (gradient,) = torch.autograd.grad(_nll(logits, labels, beta), beta)
    for k, name in enumerate(names):
        if k not in present:  # no evidence: kept at the single temperature
            assert temperatures[k] == fit['scalar_temperature']
        elif name in fit['classes_at_bound']:  # the NLL would fall further outside the range
            assert temperatures[k] in (pytest.approx(0.01), pytest.approx(100.0))
            assert float(gradient[k]) * (1 if temperatures[k] > 1 else -1) > 0
        else:
            assert abs(float(gradient[k])) < 1e-6, name
    assert fit['nll_after'] < float(_nll(logits, labels, 1 / fit['scalar_temperature']))
    config = str(tmp_path / 'deeplabv3_r18_tiny_cityscapes_ts.py')
    scaled = init_model(config, tiny_checkpoint, device='cpu')
    plain = init_model(TINY_CONFIG, tiny_checkpoint, device='cpu')
    image, _ = next(_image_label_pairs(tiny_cityscapes, 'val'))
    raw, out = inference_model(plain, image), inference_model(scaled, image)
    expected = (raw.seg_logits.data.numpy().astype(np.float64)
                / np.array(temperatures)[:, None, None]).astype(np.float32)
    assert np.array_equal(out.seg_logits.data.numpy(), expected)
    # Per-class temperatures can move the winner: the prediction is the scaled argmax.
    assert np.array_equal(out.pred_sem_seg.data.numpy(), expected.argmax(0)[None])


@pytest.mark.parametrize('splits', [[], ['--fit-split', 'val', '--eval-split', 'val']])
def test_fitting_and_reporting_on_the_same_images_is_refused(tiny_cityscapes, tiny_checkpoint,
                                                             tmp_path, splits):
    """The tiny config's test_dataloader is its val_dataloader: refused, by the image lists."""
    work_dir = tmp_path / 'ts'
    result = run_tool_here(TOOL, TINY_CONFIG, tiny_checkpoint, *splits, '--work-dir',
                           work_dir, '--cfg-options', *cityscapes_options(tiny_cityscapes))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert 'share 2 images' in lines[0] and '--cfg-options' in lines[0]
    assert 'test_dataloader' in lines[0] or 'val_dataloader' in lines[0]
    assert not work_dir.exists()  # nothing written


def test_bad_input_is_refused_in_one_line(tiny_cityscapes, tiny_checkpoint, scalar_run,
                                          tmp_path):
    cases = [
        ([TINY_CONFIG, tmp_path / 'none.pth'], 'none.pth does not exist'),
        ([TINY_CONFIG, tiny_checkpoint, '--cfg-options', *_options(tiny_cityscapes),
          'test_dataloader=None'], 'no test_dataloader'),
        ([TINY_CONFIG, tiny_checkpoint, '--cfg-options', *_options(tmp_path / 'nowhere')],
         'nowhere'),
        ([scalar_run['config'], tiny_checkpoint], 'already temperature-scaled'),
        ([TINY_CONFIG, tiny_checkpoint, '--max-fit-pixels', '0'], '--max-fit-pixels'),
    ]
    if not torch.cuda.is_available():
        cases.append(([TINY_CONFIG, tiny_checkpoint, '--device', 'cuda'], 'no CUDA device'))
    for args, message in cases:
        result = run_tool_here(TOOL, *args, '--work-dir', tmp_path / 'out')
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'out').exists()
    launcher = run_tool_here(TOOL, TINY_CONFIG, tiny_checkpoint, '--launcher', 'pytorch',
                             env={name: None for name in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE')})
    assert launcher.returncode == 2
    assert 'tools/dist_run.sh analysis/temperature_scaling.py GPUS' in launcher.stderr
