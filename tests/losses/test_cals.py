"""CALSLoss and its fast kernel against hand computation and the plain definition of
docs/method.md §1-§2 (mmcals.losses.cals.cals_penalty)."""
import math

import numpy as np
import pytest
import torch

import mmcals  # noqa: F401  (registers the modules)
from mmcals.losses import CALSLoss
from mmcals.losses import _cals_kernel as kernel_module
from mmcals.losses.cals import PENALTIES, p2, p3, phr
from mmcals.losses.cals import cals_penalty as reference_loss
from mmcals.losses.constraint_stats import ConstraintStats
from mmcals.losses.logit_gaps import GAP_BIN_WIDTH, gap_histogram

NAMES = ('phr', 'p2', 'p3')


# An independent statement of docs/method.md §2 in Python floats -----------------------------------
def hand_penalty(name, h, lam, rho):
    """(P, P') of one scalar, branch by branch as docs/method.md §2 writes them."""
    if name == 'phr':
        x = lam + rho * h
        if x >= 0:
            return (x * x - lam * lam) / (2 * rho), x
        return -lam * lam / (2 * rho), 0.0
    if h < 0:
        return lam * h / (1 - rho * h), lam / (1 - rho * h) ** 2
    if name == 'p2':
        return (lam * h + lam * rho * h ** 2 + rho ** 2 * h ** 3 / 6,
                lam + 2 * lam * rho * h + rho ** 2 * h ** 2 / 2)
    return lam * h + lam * rho * h ** 2, lam + 2 * lam * rho * h


def make_loss(num_classes=5, penalty='phr', seed=0, **kwargs):
    loss = CALSLoss(num_classes, penalty=penalty, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    # λ on both sides of ρ so that phr meets x < 0 and x >= 0, p2/p3 both signs of h.
    loss.lambda_.copy_(torch.rand(num_classes, generator=generator, dtype=torch.float64) * 3)
    loss.rho.copy_(1 + torch.rand(num_classes, generator=generator, dtype=torch.float64) * 2)
    return loss


def make_batch(num=2, num_classes=5, height=6, width=7, scale=3.0, dtype=torch.float64,
               seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num, num_classes, height, width, generator=generator,
                         dtype=torch.float64) * scale
    labels = torch.randint(0, num_classes, (num, height, width), generator=generator)
    labels[0, :2] = 255
    return logits.to(dtype), labels


# Penalty functions ---------------------------------------------------------------------------
@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('h', [-3.0, -0.7, -0.2, 0.0, 0.4, 2.5])
def test_penalty_matches_the_closed_form_of_each_branch(name, h):
    lam, rho = 0.8, 1.7  # phr: x = λ + ρh is < 0 for h < -0.47, so both phr branches show
    value, derivative = PENALTIES[name](torch.tensor([h], dtype=torch.float64),
                                        torch.tensor(lam, dtype=torch.float64),
                                        torch.tensor(rho, dtype=torch.float64))
    expected_value, expected_derivative = hand_penalty(name, h, lam, rho)
    assert value.item() == pytest.approx(expected_value, rel=1e-12, abs=1e-15)
    assert derivative.item() == pytest.approx(expected_derivative, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize('name', NAMES)
def test_penalty_derivative_is_the_derivative_of_the_value(name):
    h = torch.linspace(-4, 3, 141, dtype=torch.float64).requires_grad_()
    lam = torch.tensor(0.6, dtype=torch.float64)
    rho = torch.tensor(2.0, dtype=torch.float64)
    value, derivative = PENALTIES[name](h, lam, rho)
    (autograd,) = torch.autograd.grad(value.sum(), h)
    assert torch.allclose(derivative, autograd, rtol=1e-10, atol=1e-12)
    # Without the value only the derivative comes back, the same one.
    none, again = PENALTIES[name](h.detach(), lam, rho, value=False)
    assert none is None and torch.equal(again, derivative.detach())


def test_penalties_are_continuous_at_the_branch_points():
    lam, rho = torch.tensor(0.5), torch.tensor(3.0)
    eps = 1e-4
    for fn in (p2, p3):
        left = fn(torch.tensor([-eps]), lam, rho)
        right = fn(torch.tensor([eps]), lam, rho)
        assert abs(left[0].item() - right[0].item()) < 1e-3
        assert abs(left[1].item() - right[1].item()) < 1e-2
    # phr joins its flat branch where x = λ + ρh = 0.
    at = -lam / rho
    below, above = phr(at - eps, lam, rho), phr(at + eps, lam, rho)
    assert abs(below[0].item() - above[0].item()) < 1e-6
    assert below[1].item() == 0 and above[1].item() == pytest.approx(rho.item() * eps, rel=1e-2)


# The loss against plain autograd ------------------------------------------------------------
@pytest.fixture(params=[1 << 30, 64], ids=['one-chunk', 'many-chunks'])
def chunking(request, monkeypatch):
    """Run the pass as one chunk, or as many chunks of 12 pixels with a partial last one."""
    monkeypatch.setitem(kernel_module._CHUNK_ELEMENTS, 'cpu', request.param)
    return request.param


@pytest.mark.parametrize('penalty', NAMES)
@pytest.mark.parametrize('normalize', [True, False])
def test_loss_and_gradient_match_plain_autograd(penalty, normalize, chunking):
    loss = make_loss(penalty=penalty, margin=2.0, normalize=normalize, loss_weight=0.7)
    logits, labels = make_batch()
    weight = torch.rand(labels.shape, generator=torch.Generator().manual_seed(3),
                        dtype=torch.float64)
    for pixel_weight in (None, weight):
        ours_in = logits.clone().requires_grad_()
        ref_in = logits.clone().requires_grad_()
        ours = loss(ours_in, labels, weight=pixel_weight, ignore_index=255)
        ref = reference_loss(ref_in, labels, loss.lambda_, loss.rho, margin=2.0,
                             normalize=normalize, penalty=penalty, loss_weight=0.7,
                             weight=pixel_weight)
        ours.backward()
        ref.backward()
        assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
        assert torch.allclose(ours_in.grad, ref_in.grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize('penalty', NAMES)
def test_gradcheck_float64(penalty, chunking):
    loss = make_loss(penalty=penalty, margin=2.0)
    logits, labels = make_batch(height=4, width=5)
    torch.autograd.gradcheck(lambda z: loss(z, labels), (logits.requires_grad_(),))


def test_penalising_ignored_pixels_counts_them(chunking):
    loss = make_loss(margin=2.0, penalise_ignored=True)
    logits, labels = make_batch()
    ours_in, ref_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = loss(ours_in, labels)
    ref = reference_loss(ref_in, labels, loss.lambda_, loss.rho, margin=2.0,
                         penalise_ignored=True)
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(ours_in.grad, ref_in.grad, rtol=1e-10, atol=1e-14)
    assert ours_in.grad[0, :, :2].abs().sum() > 0  # the ignored rows get a gradient too


@pytest.mark.parametrize('penalty', NAMES)
@pytest.mark.parametrize('index_path', [False, True], ids=['sign-winner', 'index-winner'])
def test_ties_for_the_maximum_take_the_first_one(penalty, index_path, chunking, monkeypatch):
    if index_path:  # the path taken on accelerators, which always uses torch.max's index
        monkeypatch.setattr(kernel_module, '_SIGN_WINNER_DEVICES', ())
    generator = torch.Generator().manual_seed(1)
    # Small integers: most pixels have two or more classes tied for the maximum.
    logits = torch.randint(0, 3, (2, 5, 6, 7), generator=generator).to(torch.float64) * 3
    labels = torch.randint(0, 5, (2, 6, 7), generator=generator)
    loss = make_loss(penalty=penalty, margin=2.0)
    ours_in, ref_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss(ours_in, labels).backward()
    reference_loss(ref_in, labels, loss.lambda_, loss.rho, margin=2.0,
                   penalty=penalty).backward()
    assert torch.allclose(ours_in.grad, ref_in.grad, rtol=1e-10, atol=1e-14)
    # Shifting all logits of a pixel changes nothing: the gradient sums to 0 over classes.
    assert ours_in.grad.sum(1).abs().max() < 1e-14


def test_all_ignored_batch_gives_zero_loss_and_zero_gradient():
    loss = make_loss()
    logits, labels = make_batch(dtype=torch.float32)
    logits.requires_grad_()
    value = loss(logits, torch.full_like(labels, 255))
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(logits.grad).all() and not logits.grad.any()


def test_no_gradient_needed_no_gradient_computed():
    loss = make_loss()
    logits, labels = make_batch(dtype=torch.float32)
    with torch.no_grad():
        value = loss(logits, labels)
    reference = reference_loss(logits.double(), labels, loss.lambda_, loss.rho)
    assert value.item() == pytest.approx(reference.item(), rel=1e-5)


# Bad input ------------------------------------------------------------------------------------
def test_wrong_class_count_names_both_numbers():
    loss = CALSLoss(19)
    with pytest.raises(ValueError, match=r'7 classes.*num_classes=19'):
        loss(torch.randn(1, 7, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def test_unknown_penalty_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'p4'.*\['p2', 'p3', 'phr'\]"):
        CALSLoss(19, penalty='p4')


@pytest.mark.parametrize('kwargs, message', [
    ({'margin': 0}, 'margin'),
    ({'lambda_min': 0}, 'lambda_min'),
    ({'rho_init': 20.0}, 'rho_init'),
    ({'rho_gamma': 0.5}, 'rho_gamma'),
    ({'loss_name': 'cals'}, 'loss_'),
])
def test_bad_arguments_are_reported_where_they_enter(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CALSLoss(19, **kwargs)


def test_label_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match=r'labels of shape \(2, 4, 4\)'):
        CALSLoss(3)(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long))


# Mixed precision and non-finite logits -------------------------------------------------------
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('penalty', NAMES)
def test_half_precision_logits_are_computed_in_float32(dtype, penalty):
    loss = make_loss(penalty=penalty, margin=1.0)
    # Logit gaps of thousands: the cubic p2 term (ρ²h³/6 ~ 1e10) overflows fp16 arithmetic.
    logits, labels = make_batch(scale=3000.0, dtype=dtype)
    half_in = logits.clone().requires_grad_()
    full_in = logits.float().requires_grad_()  # the same values, exactly
    half, full = loss(half_in, labels), loss(full_in, labels)
    half.backward()
    full.backward()
    assert half.dtype == torch.float32 and torch.isfinite(half)
    assert half.item() == pytest.approx(full.item(), rel=1e-6)
    # The gradient is the float32 one, rounded once to the input dtype at the end (where it
    # exceeds fp16's range it is inf, as AMP's loss scaler expects).
    assert half_in.grad.dtype == dtype
    assert torch.equal(half_in.grad, full_in.grad.to(dtype))
    if penalty == 'p2' and dtype == torch.float16:  # the same formula in fp16 arithmetic
        naive = reference_loss(logits, labels, loss.lambda_, loss.rho, margin=1.0,
                               penalty='p2')
        assert not torch.isfinite(naive)


def test_autocast_keeps_the_loss_in_float32():
    loss = make_loss(penalty='p2', margin=1.0)
    layer = torch.nn.Conv2d(3, 5, 1)
    image = torch.randn(2, 3, 6, 7) * 500
    labels = torch.randint(0, 5, (2, 6, 7))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits = layer(image)
        value = loss(logits, labels)
    assert logits.dtype == torch.bfloat16 and value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(layer.weight.grad).all()
    # Autocast changed nothing inside the loss: its products and sums stayed in float32.
    reference = reference_loss(logits.detach().double(), labels, loss.lambda_, loss.rho,
                               margin=1.0, penalty='p2')
    assert value.item() == pytest.approx(reference.item(), rel=1e-6)


@pytest.mark.parametrize('bad', [float('inf'), -float('inf'), float('nan')])
def test_non_finite_logits_of_a_valid_pixel_make_the_loss_non_finite(bad):
    """So that AMP's loss scaler skips the step, as it does for cross-entropy's inf/nan.

    (A -inf logit is an infinite distance to the winner, hence an infinite penalty; CE stays
    finite there, its softmax gives that class probability 0.)
    """
    loss = make_loss(margin=2.0)
    logits, labels = make_batch(dtype=torch.float32)
    labels[1, 3, 3] = 1
    logits[1, 1, 3, 3] = bad  # a valid pixel
    logits.requires_grad_()
    value = loss(logits, labels)
    value.backward()
    assert not torch.isfinite(value)
    assert not torch.isfinite(logits.grad[1, :, 3, 3]).all()
    ce = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255)
    assert not torch.isfinite(ce)  # here the class is the label: CE is non-finite as well


@pytest.mark.parametrize('bad', [float('inf'), -float('inf'), float('nan')])
def test_non_finite_logits_of_ignored_pixels_take_no_part(bad, chunking):
    loss = make_loss(margin=2.0)
    logits, labels = make_batch()
    clean_in = logits.clone().requires_grad_()
    clean = loss(clean_in, labels)
    clean.backward()
    dirty_in = logits.clone()
    dirty_in[0, 1, 0, 3] = bad  # row 0 of image 0 is ignored
    dirty_in.requires_grad_()
    dirty = loss(dirty_in, labels)
    dirty.backward()
    assert dirty.item() == pytest.approx(clean.item(), rel=1e-12)
    assert torch.allclose(dirty_in.grad, clean_in.grad, rtol=1e-10, atol=1e-14)


def test_statistics_leave_out_pixels_with_non_finite_logits():
    loss = make_loss(margin=2.0)
    logits, labels = make_batch()
    bad_pixel = (1, 4, 5)
    dirty = logits.clone()
    dirty[bad_pixel[0], 0, bad_pixel[1], bad_pixel[2]] = float('inf')
    keep = labels.clone()
    keep[bad_pixel] = 255  # the same pixel, left out as ignored instead
    got = loss.constraint_statistics(dirty, labels)
    expected = loss.constraint_statistics(logits, keep)
    assert got.count.item() == expected.count.item() == (labels != 255).sum().item() - 1
    for a, b in ((got.sum_derivative, expected.sum_derivative),
                 (got.sum_constraint, expected.sum_constraint)):
        assert torch.isfinite(a).all() and torch.allclose(a, b, rtol=1e-12)


# Statistics for the multiplier update ------------------------------------------------------
@pytest.mark.parametrize('penalty', NAMES)
def test_constraint_statistics_match_the_definition(penalty, chunking):
    loss = make_loss(penalty=penalty, margin=2.0, lambda_min=0.05, lambda_max=2.0)
    logits, labels = make_batch()
    got = loss.constraint_statistics(logits, labels, ignore_index=255)
    sum_g, sum_h, count = got.sum_derivative, got.sum_constraint, got.count
    z = logits.permute(0, 2, 3, 1)[labels != 255]  # (pixels, C)
    h = (z.max(-1, keepdim=True).values - z - 2.0) / 2.0
    derivative = torch.stack([
        torch.tensor([hand_penalty(penalty, h[i, k].item(), loss.lambda_[k].item(),
                                   loss.rho[k].item())[1] for k in range(5)],
                     dtype=torch.float64)
        for i in range(len(h))])
    assert count.item() == len(h)
    assert torch.allclose(sum_g, derivative.clamp(0.05, 2.0).sum(0), rtol=1e-10)
    assert torch.allclose(sum_h, h.sum(0), rtol=1e-10)
    # A single image as the validation outputs hold it: (C, H, W) and (1, H, W).
    single = loss.constraint_statistics(logits[1], labels[1:2])
    both = [loss.constraint_statistics(logits[i:i + 1], labels[i:i + 1]) for i in range(2)]
    assert torch.allclose(single.sum_derivative, both[1].sum_derivative)
    assert single.count == both[1].count
    assert torch.allclose(both[0].sum_derivative + both[1].sum_derivative, sum_g, rtol=1e-12)


def test_training_forward_gathers_the_same_statistics_when_asked():
    loss = make_loss(margin=2.0)
    logits, labels = make_batch()
    loss(logits, labels)
    assert loss.pop_train_statistics().count.item() == 0  # not asked: nothing gathered
    loss.collect_train_statistics = True
    loss.eval()
    loss(logits, labels)
    assert loss.pop_train_statistics().count.item() == 0  # not in training mode
    loss.train()
    loss(logits[:1], labels[:1])
    loss(logits[1:], labels[1:])
    gathered = loss.pop_train_statistics()
    expected = loss.constraint_statistics(logits, labels)
    assert torch.allclose(gathered.flatten(), expected.flatten(), rtol=1e-12)
    assert loss.pop_train_statistics().count.item() == 0  # popping resets


# State ----------------------------------------------------------------------------------------
def test_multipliers_are_float64_buffers_in_the_state_dict():
    loss = make_loss()
    state = loss.state_dict()
    assert set(state) == {'lambda_', 'rho', 'prev_constraint', 'num_updates'}
    fresh = CALSLoss(5)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.lambda_, loss.lambda_) and torch.equal(fresh.rho, loss.rho)
    assert fresh.lambda_.dtype == torch.float64


def test_defaults_follow_the_spec():
    loss = CALSLoss(19)
    assert loss.loss_name == 'loss_cals' and loss.margin == 10 and loss.penalty == 'phr'
    assert torch.all(loss.lambda_ == 1e-6) and torch.all(loss.rho == 1.0)
    assert (loss.lambda_max, loss.rho_max, loss.rho_gamma, loss.rho_tau, loss.rho_interval) == (
        1e6, 10.0, 1.2, 0.9, 10)
    assert not loss.penalise_ignored


def test_decode_head_reports_the_loss_next_to_cross_entropy():
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    head = MODELS.build({
        'type': 'FCNHead', 'in_channels': 4, 'channels': 4, 'num_convs': 1,
        'concat_input': False, 'num_classes': 3, 'norm_cfg': None,
        'loss_decode': [{'type': 'CrossEntropyLoss', 'loss_weight': 1.0},
                        {'type': 'CALSLoss', 'num_classes': 3, 'margin': 0.01}]})
    samples = []
    for _ in range(2):
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, 8, 8)))
        samples.append(sample)
    losses = head.loss_by_feat(torch.randn(2, 3, 4, 4), samples)
    assert {'loss_ce', 'loss_cals'} <= set(losses)
    assert losses['loss_cals'].item() > 0 and math.isfinite(losses['loss_cals'].item())


# Constraint diagnostics (docs/method.md §5) ----------------------------------------------
def test_diagnostics_of_hand_made_logits():
    # Pixel 1: z = (5, 2, 0), winner 0, d = (0, 3, 5). Pixel 2: z = (1, 4, 3.5), winner 1,
    # d = (3, 0, 0.5). Margin 2: h = d/2 - 1; PHR with ρ = 1, P' = max(λ + h, 0).
    logits = torch.tensor([[5.0, 1.0], [2.0, 4.0], [0.0, 3.5]], dtype=torch.float64)
    logits = logits.reshape(1, 3, 1, 2)
    labels = torch.zeros(1, 1, 2, dtype=torch.long)
    loss = CALSLoss(3, margin=2.0)
    # Class 0 at λ = 2: its winner term (pixel 1, h = -1) has P' = 1 > λ_min but is no pair.
    loss.lambda_.copy_(torch.tensor([2.0, 1e-6, 1e-6], dtype=torch.float64))
    stats = loss.constraint_statistics(logits, labels)
    assert stats.pairs.tolist() == [1, 1, 2] and stats.count.item() == 2
    diagnostics = stats.diagnostics()
    # Pairs: class 0 (pixel 2, d 3), class 1 (pixel 1, d 3), class 2 (d 5 and 0.5).
    assert diagnostics['violating_share'] == [1.0, 1.0, 0.5]
    assert diagnostics['acting_share'] == [1.0, 1.0, 0.5]  # 0.5: h = -0.75 at the floor
    assert diagnostics['mean_h'] == pytest.approx([(-1 + 0.5) / 2, (0.5 - 1) / 2,
                                                   (1.5 - 0.75) / 2], abs=1e-15)
    for k, gaps in enumerate(([3.0], [3.0], [5.0, 0.5])):
        for p in (50, 90, 99):
            exact = float(np.quantile(gaps, p / 100, method='inverted_cdf'))
            assert abs(diagnostics[f'gap_p{p}'][k] - exact) <= GAP_BIN_WIDTH
    pooled = diagnostics['all']
    assert pooled['violating_share'] == pooled['acting_share'] == 0.75
    assert abs(pooled['gap_p50'] - 3.0) <= GAP_BIN_WIDTH
    assert abs(pooled['margin_1pct'] - 5.0) <= GAP_BIN_WIDTH  # the largest gap
    assert set(pooled) == {'violating_share', 'acting_share', 'gap_p50', 'gap_p90', 'gap_p99',
                           'margin_1pct', 'margin_10pct'}


def direct_diagnostics(loss, logits, labels, penalty):
    """Violating and acting pairs per class from the definitions, pixel by pixel."""
    z = logits.permute(0, 2, 3, 1)[labels != 255]
    winner = z.argmax(-1)
    d = z.max(-1, keepdim=True).values - z
    h = (d - loss.margin) / loss.margin
    derivative = torch.tensor([[hand_penalty(penalty, h[i, k].item(), loss.lambda_[k].item(),
                                             loss.rho[k].item())[1]
                                for k in range(z.shape[1])] for i in range(len(z))],
                              dtype=torch.float64)
    pair = torch.arange(z.shape[1])[None] != winner[:, None]
    return ((d > loss.margin) & pair).sum(0), ((derivative > loss.lambda_min) & pair).sum(0)


@pytest.mark.parametrize('penalty', NAMES)
def test_diagnostics_match_the_definition_and_the_gap_histogram(penalty, chunking):
    loss = make_loss(penalty=penalty, margin=2.0, lambda_min=0.05)
    loss.lambda_[:2] = 0.05  # at the floor p2/p3 act only where h > 0, as phr does
    logits, labels = make_batch(height=12, width=13)
    logits[0, 1, 5, 5] = logits[0, 3, 5, 5] = logits[0, :, 5, 5].max() + 1  # a tie
    stats = loss.constraint_statistics(logits, labels)
    violating, acting = direct_diagnostics(loss, logits, labels, penalty)
    assert stats.violating.tolist() == violating.tolist()
    assert stats.acting.tolist() == acting.tolist()
    assert 0 < int(acting.sum()) < int(stats.pairs.sum())  # both kinds of pair occur
    # The kernel's own histogram is the reference one, bin for bin.
    assert torch.equal(stats.gap_histogram, gap_histogram(logits, labels != 255))


def test_statistics_of_float32_logits_with_non_finite_pixels_keep_the_histogram_exact(
        chunking):
    loss = make_loss(margin=2.0)
    logits, labels = make_batch(dtype=torch.float32, height=12, width=13, scale=20.0)
    labels[1, 6, 6] = 0
    logits[1, 2, 4, 4] = float('nan')  # a valid pixel
    logits[0, 1, 0, 3] = float('inf')  # an ignored one
    logits[1, 0, 6, 6] = 1000.0  # gaps beyond GAP_RANGE
    stats = loss.constraint_statistics(logits, labels)
    valid = labels != 255
    assert stats.count.item() == valid.sum().item() - 1
    assert torch.equal(stats.gap_histogram, gap_histogram(logits, valid))
    assert stats.gap_histogram[1:, -1].sum() == 4  # the 1000 logit's pixel


def test_statistics_add_flatten_and_unflatten():
    loss = make_loss(margin=2.0)
    logits, labels = make_batch()
    a = loss.constraint_statistics(logits[:1], labels[:1])
    b = loss.constraint_statistics(logits[1:], labels[1:])
    both = loss.constraint_statistics(logits, labels)
    assert torch.allclose((a + b).flatten(), both.flatten(), rtol=1e-12, atol=0)
    again = ConstraintStats.unflatten(both.flatten(), 5)
    assert torch.equal(again.flatten(), both.flatten())
    assert torch.equal(again.means()[0], both.sum_derivative / both.count)
    with pytest.raises(ValueError, match='values'):
        ConstraintStats.unflatten(both.flatten()[:-1], 5)


def test_no_pixel_gives_nan_diagnostics():
    diagnostics = ConstraintStats.zeros(3).diagnostics()
    assert all(math.isnan(v) for v in diagnostics['acting_share'] + diagnostics['gap_p50'])
    assert all(math.isnan(v) for v in diagnostics['all'].values())
