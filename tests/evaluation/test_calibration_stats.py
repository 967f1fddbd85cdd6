"""CalibrationStats against a brute-force float64 numpy reference and torchmetrics."""
import math
import pickle

import numpy as np
import pytest
import torch
from evaluation.calibration_reference import make_images, reference_metrics
from torchmetrics.classification import MulticlassCalibrationError

from mmcals.evaluation.calibration_stats import (
    FINE_BINS,
    CalibrationStats,
    adaptive_ece,
    fine_bin,
    fine_bin_edges,
)

PERCENT_KEYS = ('ECE', 'MCE', 'aECE', 'CECE', 'NLL', 'Brier', 'mean_confidence',
                'pixel_accuracy')


def stats_of(images, **kwargs):
    num_classes = images[0][0].shape[0]
    stats = CalibrationStats(num_classes, **kwargs)
    for logits, labels in images:
        stats.update(logits, labels)
    return stats


def reference_of(images, **kwargs):
    return reference_metrics([z.double().numpy() for z, _ in images],
                             [y.numpy() for _, y in images], **kwargs)


def assert_matches_reference(summary, ref, tol=1e-9, skip=()):
    for key in PERCENT_KEYS:
        if key not in skip:
            assert summary['metrics'][key] == pytest.approx(100 * ref[key], abs=tol), key
    assert summary['num_pixels'] == ref['num_pixels']
    for k, row in enumerate(summary['per_class']):
        assert row['pixels'] == ref['pixels_k'][k]
        if 'CECE' not in skip:
            assert row['CECE'] == pytest.approx(100 * ref['CECE_k'][k], abs=tol)
        if ref['ECE_k'][k] is None:
            assert row['ECE'] is None
        else:
            assert row['ECE'] == pytest.approx(100 * ref['ECE_k'][k], abs=tol)


@pytest.mark.parametrize('num_bins', [15, 4])
def test_float64_logits_match_the_reference_exactly(num_bins):
    images = make_images(0)
    summary = stats_of(images, num_bins=num_bins, chunk_size=101).summary()
    ref = reference_of(images, num_bins=num_bins)
    # aECE is streamed: compared against the exact value in its own tests.
    assert_matches_reference(summary, ref, skip=('aECE',))
    assert abs(summary['metrics']['aECE'] - 100 * ref['aECE']) <= summary['aECE_error_bound']
    # The data is discriminating: some bins are under-, others over-confident, so ECE is
    # more than the gap between mean confidence and accuracy.
    rel = summary['reliability']
    gaps = [a - c for a, c in zip(rel['accuracy'], rel['confidence']) if a is not None]
    assert min(gaps) < 0 < max(gaps)
    assert ref['ECE'] > abs(ref['mean_confidence'] - ref['pixel_accuracy']) + 1e-3


def test_float32_and_bfloat16_logits_are_close_to_the_float64_reference():
    images = make_images(1)
    for dtype in (torch.float32, torch.bfloat16):
        cast = [(z.to(dtype), y) for z, y in images]
        # bfloat16 logits are computed in float32: compare with the reference on their values.
        assert_matches_reference(stats_of(cast).summary(), reference_of(cast), tol=1e-4,
                                 skip=('aECE',))


@pytest.mark.parametrize('threads', [1, 3])
def test_chunking_threads_and_image_order_do_not_change_the_tables(threads):
    images = make_images(2)
    whole = stats_of(images, chunk_size=10 ** 6)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pieces = stats_of(images[::-1], chunk_size=7)  # chunks shared out to `threads` threads
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    for name in CalibrationStats._TABLES:
        a, b = getattr(whole, name), getattr(pieces, name)
        if a.is_floating_point():
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-9), name
        else:
            assert torch.equal(a, b), name


def test_logits_that_require_grad_build_no_graph():
    logits, labels = make_images(3, num_images=1)[0]
    logits = logits.clone().requires_grad_()
    stats = CalibrationStats(logits.shape[0], chunk_size=50)
    stats.update(logits * 2, labels)
    assert not any(getattr(stats, name).requires_grad for name in CalibrationStats._TABLES)


def test_merging_equals_accumulating_and_survives_pickling():
    images = make_images(3, num_images=4)
    together = stats_of(images)
    first, second = stats_of(images[:2]), stats_of(images[2:])
    merged = pickle.loads(pickle.dumps(first)) + pickle.loads(pickle.dumps(second))
    assert_summaries_close(merged.summary(), together.summary())
    first += second
    assert_summaries_close(first.summary(), together.summary())


def assert_summaries_close(a, b):
    for key in PERCENT_KEYS:
        assert a['metrics'][key] == pytest.approx(b['metrics'][key], rel=1e-12, abs=1e-12)
    for x, y in zip(a['per_class'], b['per_class']):
        assert x['pixels'] == y['pixels']
        assert x['CECE'] == pytest.approx(y['CECE'], rel=1e-12, abs=1e-12)
    assert a['reliability']['count'] == b['reliability']['count']


def test_torchmetrics_agrees_where_bin_edges_agree():
    """torchmetrics bins [(b-1)/B, b/B) plus a bin for c = 1; ours ((b-1)/B, b/B].

    They agree when no confidence is a multiple of 1/B: keep only such pixels.
    """
    num_bins, num_classes = 15, 7
    images = make_images(4, num_images=2, num_classes=num_classes, shape=(40, 50),
                         ignore_fraction=0.0)
    logits = torch.cat([z.reshape(num_classes, -1) for z, _ in images], 1)
    labels = torch.cat([y.reshape(-1) for _, y in images])
    # torchmetrics bins float32 confidences: stay well away from every edge.
    conf = logits.softmax(0).amax(0)
    distance = (conf * num_bins - (conf * num_bins).round()).abs()
    keep = distance > 1e-5
    logits, labels = logits[:, keep].float(), labels[keep]
    labels[::11] = 255  # both ignore the same pixels
    ours = CalibrationStats(num_classes, num_bins)
    ours.update(logits, labels)
    metrics = ours.summary()['metrics']
    for norm, key in (('l1', 'ECE'), ('max', 'MCE')):
        theirs = MulticlassCalibrationError(num_classes=num_classes, n_bins=num_bins,
                                            norm=norm, ignore_index=255)
        theirs.update(logits.t(), labels)
        assert metrics[key] == pytest.approx(100 * float(theirs.compute()), abs=1e-4), norm


def test_an_all_ignore_image_contributes_nothing():
    images = make_images(5)
    all_ignored = (images[0][0], torch.full_like(images[0][1], 255))
    with_it = stats_of([images[0], all_ignored, images[1]])
    without = stats_of([images[0], images[1]])
    for name in CalibrationStats._TABLES:
        assert torch.equal(getattr(with_it, name), getattr(without, name)), name
    only_ignored = stats_of([all_ignored]).summary()
    assert only_ignored['num_pixels'] == 0
    assert all(value is None for value in only_ignored['metrics'].values())
    assert all(row['ECE'] is None and row['pixels'] == 0 for row in only_ignored['per_class'])


def test_a_single_valid_pixel():
    logits = torch.tensor([[0.3, 5.0], [1.2, -1.0], [-0.4, 0.0]], dtype=torch.float64)
    labels = torch.tensor([2, 255])
    summary = stats_of([(logits, labels)]).summary()
    ref = reference_of([(logits, labels)])
    assert_matches_reference(summary, ref)
    p = torch.softmax(logits[:, 0], 0)
    # One pixel: every binning gives |correct - confidence| (predicted 1, label 2: wrong).
    for key in ('ECE', 'MCE', 'aECE'):
        assert summary['metrics'][key] == pytest.approx(100 * float(p.max()), abs=1e-9)
    assert summary['num_pixels'] == 1 and summary['metrics']['pixel_accuracy'] == 0


def test_probabilities_exactly_zero_and_one_and_exact_ties():
    # Margins of 1000 give p = 1 and p = 0 exactly in float32 and float64; constant logits
    # tie every class (the prediction is the first class, as torch.argmax and mmseg).
    num_classes = 4
    logits = torch.zeros(num_classes, 3, 4, dtype=torch.float64)
    logits[1, 0] = 1000.0  # row 0: confident in class 1
    logits[3, 1, :2] = 1000.0  # row 1: class 3 in two pixels, ties elsewhere
    labels = torch.tensor([[1, 1, 0, 2], [3, 0, 0, 1], [0, 1, 2, 3]])
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        z = logits.to(dtype)
        p = torch.softmax(z, 0)
        assert (p == 1).any() and (p == 0).any()
        summary = stats_of([(z, labels)], num_bins=5).summary()
        ref = reference_of([(z, labels)], num_bins=5)
        assert_matches_reference(summary, ref, tol=tol, skip=('aECE',))
        # Tied confidences make the sort-based aECE depend on the order of the ties; the
        # streamed value splits them in proportion, within the reported bound.
        assert abs(summary['metrics']['aECE'] - 100 * ref['aECE']) <= summary[
            'aECE_error_bound']
        # Confidence 1 lands in the last bin (6 pixels, 3 right); the 6 tied pixels have
        # confidence 1/4, bin (1/5, 2/5], and are right only when labelled 0 (2 of them).
        rel = summary['reliability']
        assert rel['count'][-1] == 6 and rel['accuracy'][-1] == pytest.approx(3 / 6)
        assert rel['count'][1] == 6 and rel['accuracy'][1] == pytest.approx(2 / 6)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_many_exact_and_near_ties_predict_the_first_maximum(dtype):
    """Logits on a coarse grid tie in about a third of the pixels, and entries one float32
    step below the maximum round to a probability ratio of exactly 1 without being ties:
    the prediction stays the first maximal logit (as torch.argmax) in both modes, and
    every metric matches the float64 reference on the same values."""
    g = torch.Generator().manual_seed(12)
    num_classes, num_pixels = 5, 6000
    grid = torch.randint(0, 3, (num_classes, num_pixels), generator=g).to(dtype) * 0.5
    near = torch.rand(num_classes, num_pixels, generator=g) < 0.1
    logits = torch.where(near, torch.nextafter(grid, torch.full_like(grid, -1.0)), grid)
    first = logits.argmax(0)
    top = logits.amax(0)
    assert ((logits == top).sum(0) >= 2).float().mean() > 0.25  # exact ties
    exp_one = torch.exp(logits - top) == 1
    assert (exp_one & (logits < top)).any()  # near ties: a ratio of 1 below the maximum
    labels = torch.where(torch.rand(num_pixels, generator=g) < 0.6, first,
                         torch.randint(0, num_classes, (num_pixels,), generator=g))
    images = [(logits.view(num_classes, 60, 100), labels.view(60, 100))]
    # 14 bins: no confidence of this grid lies on a bin edge (with 15, five equal logits give
    # 1/5 = 3/15, whose bin then depends on the float32 rounding).
    ref = reference_of(images, num_bins=14)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    full = stats_of(images, num_bins=14).summary()
    assert_matches_reference(full, ref, tol=tol, skip=('aECE',))
    assert full['metrics']['pixel_accuracy'] == pytest.approx(
        100 * float((first == labels).double().mean()), abs=1e-9)
    top_only = stats_of(images, num_bins=14, top_label_only=True).summary()
    for key in ('ECE', 'MCE', 'aECE', 'NLL', 'pixel_accuracy'):
        assert top_only['metrics'][key] == full['metrics'][key], key


def test_empty_bins_are_reported_as_none_and_skipped_by_mce():
    images = make_images(6, max_margin=30.0)
    images = [(z * 4, y) for z, y in images]  # confidences in few, high bins
    summary = stats_of(images).summary()
    rel = summary['reliability']
    empty = [b for b, n in enumerate(rel['count']) if n == 0]
    assert empty
    assert all(rel['confidence'][b] is None and rel['accuracy'][b] is None for b in empty)
    assert_matches_reference(summary, reference_of(images), skip=('aECE',))


def test_a_class_absent_from_the_ground_truth_and_the_classes_option():
    images = make_images(7, num_classes=5)
    images = [(z, torch.where(y == 3, torch.full_like(y, 255), y)) for z, y in images]
    stats = stats_of(images)
    summary = stats.summary()
    ref = reference_of(images)
    assert_matches_reference(summary, ref, skip=('aECE',))
    absent = summary['per_class'][3]
    assert absent['pixels'] == 0 and absent['ECE'] is None and absent['CECE'] > 0
    assert summary['cece_classes'] == ['0', '1', '2', '4']
    # Mean over the present classes only: not over all five.
    cece_k = [row['CECE'] for row in summary['per_class']]
    assert summary['metrics']['CECE'] == pytest.approx(np.mean(cece_k[:3] + cece_k[4:]))
    chosen = stats.summary(classes=[0, 3, 4])
    assert chosen['metrics']['CECE'] == pytest.approx(100 * reference_of(
        images, classes=[0, 3, 4])['CECE'], abs=1e-9)
    assert chosen['cece_classes'] == ['0', '4']
    with pytest.raises(ValueError, match='class index 9'):
        stats.summary(classes=[9])


def test_top_label_only_skips_cece_and_brier_and_keeps_the_rest():
    images = make_images(8)
    full, top = stats_of(images).summary(), stats_of(images, top_label_only=True).summary()
    assert top['metrics']['CECE'] is None and top['metrics']['Brier'] is None
    assert all(row['CECE'] is None for row in top['per_class'])
    for key in ('ECE', 'MCE', 'aECE', 'NLL', 'mean_confidence', 'pixel_accuracy'):
        assert top['metrics'][key] == full['metrics'][key]


def piled_near_one(seed, num_pixels=200_000, num_classes=8):
    """float64 logits whose confidences pile up near 1 (margins up to 30: 1 - c down to
    1e-13), labelled so that calibration swings between over- and under-confidence along
    -log(1 - c), as the equal-mass bins of a real model do."""
    g = torch.Generator().manual_seed(seed)
    margin = torch.rand(num_pixels, generator=g, dtype=torch.float64) ** 0.5 * 30
    favoured = torch.randint(0, num_classes, (num_pixels,), generator=g)
    logits = torch.randn(num_classes, num_pixels, generator=g, dtype=torch.float64)
    logits.scatter_add_(0, favoured[None], margin[None])
    conf, pred = torch.softmax(logits, 0).max(0)
    p_right = (conf + 0.15 * torch.sin(-3 * torch.log1p(-conf))).clamp(0, 1)
    right = torch.rand(num_pixels, generator=g, dtype=torch.float64) < p_right
    other = (pred + torch.randint(1, num_classes, (num_pixels,), generator=g)) % num_classes
    return logits, torch.where(right, pred, other)


@pytest.mark.parametrize('seed', [9, 11])
def test_streaming_aece_within_005_points_of_the_exact_value_near_one(seed):
    logits, labels = piled_near_one(seed)
    exact = 100 * reference_metrics([logits.numpy()], [labels.numpy()])['aECE']
    conf = torch.softmax(logits, 0).amax(0)
    assert (conf > 0.999).float().mean() > 0.5  # piled up near 1
    assert (torch.softmax(logits.float(), 0).amax(0) == 1).float().mean() > 0.3  # float32: ties
    for dtype in (torch.float64, torch.float32):
        stats = CalibrationStats(logits.shape[0])
        stats.update(logits.to(dtype), labels)
        summary = stats.summary()
        signs = {a > c for a, c in zip(summary['reliability']['accuracy'],
                                       summary['reliability']['confidence']) if a is not None}
        assert signs == {True, False}  # over- and under-confident bins
        error = abs(summary['metrics']['aECE'] - exact)
        assert error <= 0.05, (dtype, error)
        if dtype == torch.float64:  # the bound is about the same confidences
            assert error <= summary['aECE_error_bound'] + 1e-9


def test_adaptive_ece_bound_holds_when_the_order_inside_fine_bins_is_adversarial():
    """Coarse fine bins, calibration changing sign, wrong pixels first, last or shuffled
    inside each fine bin: the exact aECE moves, and always stays within the bound."""
    rng = np.random.default_rng(10)
    conf = np.sort(rng.uniform(0.3, 1.0, 3000))
    correct = rng.uniform(size=conf.size) < np.clip(conf + 0.3 * np.sin(12 * conf), 0, 1)
    edges = np.linspace(0, 1, 21)
    fine = np.clip(np.ceil(conf * 20).astype(int) - 1, 0, 19)
    count = np.bincount(fine, minlength=20)
    conf_sum = np.bincount(fine, weights=conf, minlength=20)
    correct_sum = np.bincount(fine, weights=correct, minlength=20)
    streamed, bound = adaptive_ece(count, conf_sum, correct_sum, 15, (edges[:-1], edges[1:]))
    errors = []
    for arrangement in ('wrong first', 'wrong last', 'shuffled'):
        key = {'wrong first': correct, 'wrong last': ~correct,
               'shuffled': rng.permutation(conf.size)}[arrangement]
        order = np.lexsort((key, fine))
        c, a = conf[order], correct[order].astype(float)
        exact = sum(abs(a[i].sum() - c[i].sum()) for i in np.array_split(
            np.arange(c.size), 15)) / c.size
        errors.append(abs(streamed - exact))
        assert errors[-1] <= bound + 1e-12, arrangement
    assert max(errors) > 1e-3 and bound < 0.5


def test_fine_bins_cover_the_confidence_range():
    lower, upper = fine_bin_edges()
    assert lower[0] == 0 and upper[-1] == 1 and np.all(upper >= lower)
    below_one = upper < 1 - 1e-12  # the last bins are narrower than float64's spacing
    assert np.all(upper[below_one] > lower[below_one]) and below_one.sum() > 3000
    conf = torch.tensor([0.0, 0.5, 0.9, 1 - 1e-12, 1.0], dtype=torch.float64)
    index = fine_bin(conf).numpy()
    assert index[-1] == FINE_BINS - 1 and index[-2] < FINE_BINS - 1
    assert np.all((lower[index] <= conf.numpy()) & (conf.numpy() <= upper[index]))


@pytest.mark.parametrize('labels, message', [
    (torch.tensor([[0, 7]]), 'label value 7'),
    (torch.tensor([[0, -1]]), 'label value -1'),
    (torch.zeros(1, 3, dtype=torch.long), r'do not match logits'),
])
def test_bad_labels_are_rejected_with_the_value(labels, message):
    stats = CalibrationStats(3)
    with pytest.raises(ValueError, match=message):
        stats.update(torch.randn(3, 1, 2), labels)


def test_bad_logits_and_arguments_are_rejected():
    stats = CalibrationStats(3)
    with pytest.raises(ValueError, match='num_classes=3'):
        stats.update(torch.randn(4, 2, 2), torch.zeros(2, 2, dtype=torch.long))
    bad = torch.randn(3, 2, 2)
    bad[1, 0, 0] = math.nan
    with pytest.raises(ValueError, match='NaN or infinite'):
        stats.update(bad, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match='num_classes must be'):
        CalibrationStats(1)
    with pytest.raises(ValueError, match='num_bins must be'):
        CalibrationStats(3, num_bins=0)
    with pytest.raises(ValueError, match='cannot merge'):
        CalibrationStats(3) + CalibrationStats(3, num_bins=10)
