"""mmcals.calibration: the temperature fits against independent float64 minimisations, the pixel
sample, the fit metric across ranks, and TemperatureScaledSegmentor's outputs and state dict."""
import math
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.structures import PixelData
from mmseg.registry import METRICS, MODELS
from mmseg.structures import SegDataSample

import mmcals  # noqa: F401  (registrations)
from mmcals.calibration import temperature_scaling as ts
from mmcals.calibration.scaled_segmentor import scaled_class
from mmcals.calibration.temperature import (
    PixelSample,
    fit_class_temperatures,
    fit_temperature,
    nll,
    scale_logits,
)
from mmcals.cli import UsageError

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY = osp.join(REPO, 'tests', 'configs', 'deeplabv3_tiny_cals_cityscapes.py')


def _synthetic(seed, sharpness, n=4000, classes=4, scales=None):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=gen)
    signal = torch.nn.functional.one_hot(labels, classes).double()
    noise = torch.randn(n, classes, generator=gen, dtype=torch.float64)
    logits = sharpness * (signal + noise)
    if scales is not None:  # classes over- and under-confident by different factors
        logits = logits * torch.tensor(scales, dtype=torch.float64)
    return logits.float(), labels


def direct_nll(logits, labels, beta):
    """NLL of softmax(beta * z) in float64, written out (no package code)."""
    z = logits.double() * beta
    return (torch.logsumexp(z, 1) - z.gather(1, labels[:, None])[:, 0]).mean()


def golden_section_log_t(logits, labels, lo=math.log(0.01), hi=math.log(100.0), steps=200):
    """The log T minimising the float64 NLL by golden-section search (the NLL is unimodal in
    log T): 200 steps shrink the bracket far below float64 resolution of the minimiser."""
    ratio = (math.sqrt(5) - 1) / 2
    f = lambda t: float(direct_nll(logits, labels, math.exp(-t)))  # noqa: E731
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(steps):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return 0.5 * (a + b)


@pytest.mark.parametrize('sharpness', [0.3, 1.0, 6.0])  # under-, roughly, over-confident
def test_single_temperature_is_the_float64_nll_minimiser(sharpness):
    logits, labels = _synthetic(0, sharpness)
    temperature, at_bound = fit_temperature(logits, labels)
    assert not at_bound
    # The minimiser is determined to about sqrt(float64 eps) by NLL values alone.
    assert math.log(temperature) == pytest.approx(golden_section_log_t(logits, labels),
                                                  abs=1e-6)
    beta = torch.tensor(1 / temperature, dtype=torch.float64, requires_grad=True)
    value = direct_nll(logits, labels, beta)
    (slope,) = torch.autograd.grad(value, beta)
    assert abs(float(slope)) < 1e-8  # a stationary point of a convex function: the minimum
    assert nll(logits, labels, temperature) == pytest.approx(value.item(), rel=1e-12)


def test_single_temperature_at_the_search_bound():
    labels = torch.arange(6) % 3
    logits = torch.nn.functional.one_hot(labels, 3).float() * 4  # every pixel correct
    temperature, at_bound = fit_temperature(logits, labels)
    assert at_bound and temperature == pytest.approx(0.01)
    with pytest.raises(ValueError, match='no valid pixel'):
        fit_temperature(logits[:0], labels[:0])


def lbfgs_class_temperatures(logits, labels):
    """Per-class temperatures by torch's L-BFGS in float64, unconstrained in beta = 1/T."""
    beta = torch.ones(logits.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([beta], lr=1, max_iter=1000, tolerance_grad=1e-15,
                                  tolerance_change=1e-18, line_search_fn='strong_wolfe')

    def closure():
        optimiser.zero_grad()
        value = direct_nll(logits, labels, beta)
        value.backward()
        return value

    optimiser.step(closure)
    return (1 / beta.detach()).tolist()


def test_class_temperatures_are_the_float64_nll_minimiser():
    logits, labels = _synthetic(1, 2.0, n=6000, classes=5, scales=[3.0, 1.0, 0.5, 2.0, 1.0])
    fitted = fit_class_temperatures(logits, labels)
    assert fitted['at_bound'] == [] and fitted['without_pixels'] == []
    assert fitted['start'] == fit_temperature(logits, labels)[0]
    expected = lbfgs_class_temperatures(logits, labels)
    assert fitted['temperatures'] == pytest.approx(expected, rel=1e-6)
    # The classes really differ: the per-class fit is not the single T repeated.
    assert max(fitted['temperatures']) / min(fitted['temperatures']) > 3
    beta = (1 / torch.tensor(fitted['temperatures'], dtype=torch.float64)).requires_grad_()
    value = direct_nll(logits, labels, beta)
    (gradient,) = torch.autograd.grad(value, beta)
    assert float(gradient.abs().max()) < 1e-9
    assert value <= direct_nll(logits, labels, 1 / torch.tensor(expected)) + 1e-14
    assert nll(logits, labels, fitted['temperatures']) == pytest.approx(value.item(), rel=1e-12)


def test_class_without_pixels_keeps_the_single_temperature_and_bounds_hold():
    logits, labels = _synthetic(2, 2.0, n=3000, classes=4)
    keep = labels != 3  # class 3 never appears in the labels
    logits, labels = logits[keep], labels[keep]
    # Class 0's logit separates its pixels from the others by sign: its NLL terms keep
    # falling as T_0 -> 0, and are still resolved in float64 at T_0 = 0.01 (0.05 / 0.01 = 5).
    logits[:, 0] = torch.where(labels == 0, 0.05, -0.05)
    fitted = fit_class_temperatures(logits, labels, start=1.5)
    assert fitted['without_pixels'] == [3] and fitted['temperatures'][3] == 1.5
    assert fitted['at_bound'] == [0] and fitted['temperatures'][0] == pytest.approx(0.01)
    # The optimality conditions of the box-constrained problem, by autograd: zero gradient in
    # the free classes; at T_0 = 0.01 (beta_0 at its upper end) the NLL still falls in beta_0.
    beta = (1 / torch.tensor(fitted['temperatures'], dtype=torch.float64)).requires_grad_()
    (gradient,) = torch.autograd.grad(direct_nll(logits, labels, beta), beta)
    assert float(gradient[1:3].abs().max()) < 1e-9
    assert float(gradient[0]) < 0


def test_scale_logits_is_the_correctly_rounded_quotient():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(4, 5, 6, generator=gen) * 30
    for temperature in (1.7, 0.013, 3.0):
        expected = (z.numpy().astype(np.float64) / temperature).astype(np.float32)
        assert np.array_equal(scale_logits(z, temperature).numpy(), expected)
    per_class = [0.5, 1.0, 2.0, 3.0]
    expected = (z.numpy().astype(np.float64)
                / np.array(per_class)[:, None, None]).astype(np.float32)
    assert np.array_equal(scale_logits(z, per_class, dim=0).numpy(), expected)


def _image(index, size=100, classes=3):
    logits = torch.full((classes, 1, size), float(index))
    labels = torch.full((1, size), index % classes)
    labels[0, ::10] = 255  # 10 ignored pixels per image
    return logits, labels


def test_pixel_sample_caps_memory_and_keeps_valid_pixels():
    sample = PixelSample(capacity=150, ignore_index=255, seed=0)
    for i in range(10):
        sample.add(*_image(i), name=f'img{i}')
    assert sample.seen == 900 and len(sample) == 150 == len(sample.logits)
    assert (sample.labels != 255).all()
    # logits of image i are all i: a kept pixel's logits match its image's labels
    assert torch.equal(sample.labels, sample.logits[:, 0].long() % 3)
    big = PixelSample(capacity=10_000, seed=0)
    for i in range(10):
        big.add(*_image(i), name=f'img{i}')
    assert len(big) == 900  # below the cap every valid pixel is kept
    assert (np.bincount(big.logits[:, 0].long().numpy(), minlength=10) == 90).all()


def test_pixel_sample_is_uniform_over_images():
    """Over many seeds each of 10 equal images gets a tenth of the sample on average."""
    totals = np.zeros(10)
    seeds = 60
    for seed in range(seeds):
        sample = PixelSample(capacity=180, seed=seed)
        for i in range(10):
            sample.add(*_image(i), name=f'img{i}')
        totals += np.bincount(sample.logits[:, 0].long().numpy(), minlength=10)
    # 18 per image expected; the mean over 60 seeds has a standard deviation of about 0.5.
    assert np.abs(totals / seeds - 18).max() < 2.5


def test_pixel_sample_does_not_depend_on_order_or_split():
    gen = torch.Generator().manual_seed(4)
    images = [(torch.randn(3, 8, 9, generator=gen), torch.randint(0, 3, (8, 9), generator=gen))
              for _ in range(7)]
    whole = PixelSample(capacity=100, seed=5)
    for i, (z, y) in enumerate(images):
        whole.add(z, y, name=f'img{i}')
    parts = [PixelSample(capacity=100, seed=5) for _ in range(3)]
    for i in (6, 2, 4, 0, 5, 1, 3):  # shuffled, spread over three "ranks"
        parts[i % 3].add(*images[i], name=f'img{i}')
    merged = PixelSample(capacity=100, seed=5)
    for part in parts:
        merged.merge(part)
    assert merged.seen == whole.seen == 7 * 72
    for got, expected in zip(merged.pixels(), whole.pixels()):
        assert torch.equal(got, expected)
    other_seed = PixelSample(capacity=100, seed=6)
    for i, (z, y) in enumerate(images):
        other_seed.add(z, y, name=f'img{i}')
    assert not torch.equal(other_seed.pixels()[0], whole.pixels()[0])


def _sample(logits, labels, path):
    return {'seg_logits': {'data': logits}, 'gt_sem_seg': {'data': labels},
            'img_path': path}


def test_fit_metric_drops_padding_and_merges_ranks_exactly(monkeypatch):
    gen = torch.Generator().manual_seed(6)
    images = []
    for i in range(5):
        labels = torch.randint(0, 4, (1, 6, 5), generator=gen)
        logits = 3 * torch.nn.functional.one_hot(labels[0], 4).permute(2, 0, 1).float()
        images.append(_sample(logits + torch.randn(4, 6, 5, generator=gen) * 2, labels,
                              f'/data/img{i}.png'))
        images[-1]['gt_sem_seg']['data'][0, 0, 0] = 255
    meta = {'classes': ('a', 'b', 'c', 'd')}

    def metric(**kwargs):
        built = METRICS.build(dict(type='TemperatureFitMetric', max_pixels=60, **kwargs))
        built.dataset_meta = meta
        return built

    single = metric()
    single.process(None, images)
    expected = single.evaluate(len(images))
    # Direct: the sample of all five images, fitted.
    direct = PixelSample(60)
    for s in images:
        direct.add(s['seg_logits']['data'], s['gt_sem_seg']['data'], s['img_path'])
    assert expected['temperature'] == fit_temperature(*direct.pixels())[0]
    assert expected['pixels_seen'] == 5 * 29 and expected['pixels_used'] == 60

    # Two ranks: rank r gets positions r, r + 2, ...; rank 1 is padded with image 0.
    parts = []
    monkeypatch.setattr('mmengine.evaluator.BaseMetric.evaluate',
                        lambda self, size: parts.extend(self.results))
    for rank in (0, 1):
        monkeypatch.setattr(ts, 'get_dist_info', lambda rank=rank: (rank, 2))
        ranked = metric()
        ranked.process(None, (images + images[:1])[rank::2])
        ranked.evaluate(len(images))
    monkeypatch.undo()
    assert len(parts) == 2
    assert metric().compute_metrics(parts) == expected  # exactly, not approximately

    per_class = metric(per_class=True).compute_metrics(parts)
    logits, labels = direct.pixels()
    fitted = fit_class_temperatures(logits, labels)
    assert per_class['temperature'] == fitted['temperatures']
    assert per_class['scalar_temperature'] == expected['temperature']
    assert per_class['nll_after'] <= expected['nll_after'] <= expected['nll_before']


def test_fit_metric_reports_no_valid_pixel_and_refuses_bad_input():
    metric = METRICS.build(dict(type='TemperatureFitMetric'))
    metric.dataset_meta = {'classes': ('a', 'b')}
    metric.process(None, [_sample(torch.zeros(2, 2, 2), torch.full((1, 2, 2), 255), 'x')])
    result = metric.evaluate(1)
    assert result['pixels_used'] == 0 and math.isnan(result['temperature'])
    with pytest.raises(KeyError, match='seg_logits'):
        metric.process(None, [{'gt_sem_seg': {'data': torch.zeros(1, 2, 2)}}])
    with pytest.raises(ValueError, match='3 channels but dataset_meta lists 2 classes'):
        metric.process(None, [_sample(torch.zeros(3, 2, 2), torch.zeros(1, 2, 2), 'x')])
    with pytest.raises(ValueError, match='pixel cap'):
        METRICS.build(dict(type='TemperatureFitMetric', max_pixels=0))


@pytest.fixture(scope='module')
def segmentors():
    """The tiny CALS model, plain and scaled, with the same random weights."""
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    model_cfg = Config.fromfile(TINY).model
    torch.manual_seed(0)
    plain = MODELS.build(model_cfg).eval()
    scaled = MODELS.build(ts.scaled_model_config(model_cfg, 1.7)).eval()
    per_class = MODELS.build(ts.scaled_model_config(
        model_cfg, [0.5 + 0.1 * k for k in range(19)], keep_uncalibrated=True)).eval()
    for model in (scaled, per_class):
        model.load_state_dict(plain.state_dict(), strict=True)
    return model_cfg, plain, scaled, per_class


def _predict(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, 32, 64, generator=gen) * 255
    meta = dict(img_shape=(32, 64), ori_shape=(32, 64), pad_shape=(32, 64),
                padding_size=[0, 0, 0, 0])
    with torch.no_grad():
        inputs = model.data_preprocessor({'inputs': [image[0]], 'data_samples': [
            SegDataSample(metainfo=meta)]})
        return model.predict(inputs['inputs'], inputs['data_samples'])[0]


def test_scaled_segmentor_keeps_the_checkpoint_keys_and_scales_seg_logits(segmentors):
    model_cfg, plain, scaled, per_class = segmentors
    assert type(scaled) is scaled_class(type(plain)) and isinstance(scaled, type(plain))
    assert list(scaled.state_dict()) == list(plain.state_dict())
    raw = _predict(plain)
    out = _predict(scaled)
    expected = (raw.seg_logits.data.numpy().astype(np.float64) / 1.7).astype(np.float32)
    assert np.array_equal(out.seg_logits.data.numpy(), expected)
    assert torch.equal(out.pred_sem_seg.data, raw.pred_sem_seg.data)  # scalar T: same argmax
    assert 'seg_logits_uncalibrated' not in out

    temperatures = np.array([0.5 + 0.1 * k for k in range(19)])
    vector = _predict(per_class)
    expected = (raw.seg_logits.data.numpy().astype(np.float64)
                / temperatures[:, None, None]).astype(np.float32)
    assert np.array_equal(vector.seg_logits.data.numpy(), expected)
    assert np.array_equal(vector.pred_sem_seg.data.numpy(), expected.argmax(0)[None])
    assert torch.equal(vector.seg_logits_uncalibrated.data, raw.seg_logits.data)


def test_uncalibrated_metric_measures_the_raw_logits(segmentors):
    _, plain, _, per_class = segmentors
    raw, out = _predict(plain, seed=1), _predict(per_class, seed=1)
    labels = PixelData(data=torch.randint(0, 19, (1, 32, 64)))
    raw.gt_sem_seg = labels
    out.gt_sem_seg = labels
    reference = METRICS.build(dict(type='PixelCalibrationMetric', out_dir=None))
    before = METRICS.build(dict(type='UncalibratedCalibrationMetric', out_dir=None))
    for metric in (reference, before):
        metric.dataset_meta = {'classes': [str(k) for k in range(19)]}
    reference.process(None, [raw])
    before.process(None, [out])
    assert before.compute_metrics(before.results) == reference.compute_metrics(
        reference.results)
    with pytest.raises(KeyError, match='keep_uncalibrated=True'):
        before.process(None, [raw])


def test_scaled_segmentor_refuses_bad_temperatures(segmentors):
    model_cfg = segmentors[0]
    for bad, message in ((0.0, 'finite and > 0'), ([1.0, 2.0], '2 for 19 classes'),
                         ('hot', 'a number or a list')):
        with pytest.raises(ValueError, match=message):
            MODELS.build(ts.scaled_model_config(model_cfg, bad))
    binary = Config(dict(model_cfg))
    binary.model = dict(model_cfg)
    binary.model['decode_head'] = dict(model_cfg.decode_head, num_classes=2, out_channels=1)
    with pytest.raises(ValueError, match='out_channels=1'):
        MODELS.build(ts.scaled_model_config(binary.model, 1.5))
    scaled = Config(dict(model=ts.scaled_model_config(model_cfg, 1.5)))
    with pytest.raises(UsageError, match='already temperature-scaled'):
        ts.check_scalable(scaled, 'x_ts.py')


def test_same_images_are_refused_in_one_line():
    ts.check_disjoint_images('val', ['/a', '/b'], 'test', ['/c'])
    with pytest.raises(UsageError) as error:
        ts.check_disjoint_images('val', ['/a', '/b'], 'test', ['/c', '/b'])
    message = str(error.value)
    assert '\n' not in message
    assert 'share 1 images (e.g. /b)' in message and 'test_dataloader.dataset' in message


def test_evaluation_config_mirrors_the_test_evaluator():
    cfg = Config(dict(
        work_dir='w', model=dict(type='EncoderDecoder', decode_head=dict(ignore_index=7)),
        test_evaluator=[dict(type='IoUMetric', iou_metrics=['mIoU']),
                        dict(type='PixelCalibrationMetric', num_bins=10, classes=[1, 2])],
        visualizer=dict(type='SegLocalVisualizer', name='visualizer')))
    evaluation = ts.configure_evaluation(cfg, dict(dataset=dict()), 2.0, num_bins=None)
    before, iou, after = evaluation.test_evaluator
    assert iou == dict(type='IoUMetric', iou_metrics=['mIoU'])
    assert after == dict(type='PixelCalibrationMetric', num_bins=10, classes=[1, 2],
                         out_dir=None)
    assert before == dict(after, type='UncalibratedCalibrationMetric', prefix='uncalibrated')
    assert evaluation.model == dict(type='TemperatureScaledSegmentor',
                                    segmentor_type='EncoderDecoder', temperature=2.0,
                                    keep_uncalibrated=True, decode_head=dict(ignore_index=7))
    assert evaluation.work_dir == osp.join('w', 'eval') and 'name' not in evaluation.visualizer
    bare = Config(dict(work_dir='w', model=dict(type='EncoderDecoder',
                                                decode_head=dict(ignore_index=7))))
    types = [(e['type'], e.get('num_bins'), e.get('ignore_index')) for e in
             ts.configure_evaluation(bare, dict(), [1.0, 2.0], num_bins=20).test_evaluator]
    assert types == [('UncalibratedCalibrationMetric', 20, 7), ('IoUMetric', None, 7),
                     ('PixelCalibrationMetric', 20, 7)]
