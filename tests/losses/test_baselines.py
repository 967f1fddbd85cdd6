"""The baseline calibration losses against direct float64 computations written here."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS

import mmcals  # noqa: F401  (registrations)
from mmcals.losses import ConfidencePenaltyLoss, LabelSmoothingLoss, MarginLoss, SoftmaxFocalLoss

C = 5
IGNORE = 255
# mmseg divides by (avg_factor + float32 eps): agreement to ~1e-8 relative, not 1e-15.
RTOL = 1e-6


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def ref_ls(z, y, epsilon=0.05):
    q = np.full(len(z), epsilon / len(z))
    q[y] += 1 - epsilon
    return -(q * np.log(_softmax(z))).sum()


def ref_mbls(z, y, margin=10.0, alpha=0.1):
    penalty = np.mean([max(z.max() - zk - margin, 0.0) for zk in z])
    return -math.log(_softmax(z)[y]) + alpha * penalty


def ref_focal(z, y, gamma=3.0):
    p = _softmax(z)[y]
    return -((1 - p) ** gamma) * math.log(p)


def ref_ecp(z, y, beta=0.1):
    p = _softmax(z)
    return -math.log(p[y]) + beta * (p * np.log(p)).sum()


CASES = [
    (LabelSmoothingLoss, ref_ls, {'epsilon': 0.05}, 'loss_ls'),
    (LabelSmoothingLoss, ref_ls, {'epsilon': 0.3}, 'loss_ls'),
    (MarginLoss, ref_mbls, {'margin': 10.0, 'alpha': 0.1}, 'loss_mbls'),
    (MarginLoss, ref_mbls, {'margin': 1.5, 'alpha': 0.7}, 'loss_mbls'),
    (SoftmaxFocalLoss, ref_focal, {'gamma': 3.0}, 'loss_focal'),
    (SoftmaxFocalLoss, ref_focal, {'gamma': 1.5}, 'loss_focal'),
    (ConfidencePenaltyLoss, ref_ecp, {'beta': 0.1}, 'loss_ecp'),
    (ConfidencePenaltyLoss, ref_ecp, {'beta': 0.8}, 'loss_ecp'),
]
IDS = [f'{cls.__name__}-{kw}' for cls, _, kw, _ in CASES]


def _batch(seed, ignored=0.2, scale=6.0):
    gen = torch.Generator().manual_seed(seed)
    # Wide logits so the margin term is active on some pixels (distances above m).
    pred = torch.randn(2, C, 3, 4, generator=gen, dtype=torch.float64) * scale
    label = torch.randint(0, C, (2, 3, 4), generator=gen)
    label[torch.rand(2, 3, 4, generator=gen) < ignored] = IGNORE
    return pred, label


def _reference(ref, kwargs, pred, label, class_weight=None, avg_non_ignore=False,
               reduction='mean', pixel_weight=None):
    """Loop over pixels; mmseg's reduction written out by hand."""
    z = pred.detach().numpy()
    y = label.numpy()
    w = pixel_weight.numpy() if pixel_weight is not None else np.ones(y.shape)
    total, denominator = 0.0, 0.0
    per_pixel = np.zeros(y.shape)
    for n, i, j in np.ndindex(*y.shape):
        if y[n, i, j] == IGNORE:
            if class_weight is None and not avg_non_ignore:
                denominator += 1
            continue
        cw = 1.0 if class_weight is None else class_weight[y[n, i, j]]
        value = cw * ref(z[n, :, i, j], y[n, i, j], **kwargs)
        per_pixel[n, i, j] = value * w[n, i, j]
        total += value * w[n, i, j]
        denominator += cw
    if reduction == 'none':
        return per_pixel
    if reduction == 'sum':
        return total
    return total / denominator


@pytest.mark.parametrize('cls,ref,kwargs,name', CASES, ids=IDS)
@pytest.mark.parametrize('avg_non_ignore', [False, True])
def test_matches_direct_computation(cls, ref, kwargs, name, avg_non_ignore):
    pred, label = _batch(0)
    loss = cls(**kwargs, avg_non_ignore=avg_non_ignore, loss_weight=0.7)
    out = loss(pred, label, ignore_index=IGNORE)
    expected = 0.7 * _reference(ref, kwargs, pred, label, avg_non_ignore=avg_non_ignore)
    assert out.item() == pytest.approx(expected, rel=RTOL)
    assert loss.loss_name == name


@pytest.mark.parametrize('cls,ref,kwargs,name', CASES, ids=IDS)
def test_class_weights_pixel_weights_and_reductions(cls, ref, kwargs, name, tmp_path):
    pred, label = _batch(1)
    class_weight = [0.5, 2.0, 1.0, 3.0, 0.25]
    pixel_weight = torch.rand(label.shape, generator=torch.Generator().manual_seed(2))
    np.save(tmp_path / 'w.npy', np.array(class_weight))
    for source in (class_weight, str(tmp_path / 'w.npy')):
        loss = cls(**kwargs, class_weight=source)
        for reduction in ('mean', 'sum', 'none'):
            out = loss(pred, label, weight=pixel_weight, ignore_index=IGNORE,
                       reduction_override=reduction)
            expected = _reference(ref, kwargs, pred, label, class_weight, reduction=reduction,
                                  pixel_weight=pixel_weight)
            np.testing.assert_allclose(out.detach().numpy(), expected, rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize('cls,ref,kwargs,name', CASES, ids=IDS)
def test_gradients_finite_and_ignored_pixels_inert(cls, ref, kwargs, name):
    pred, label = _batch(3, scale=30.0)  # saturated softmax: p_y near 0 or 1
    pred = pred.float().requires_grad_()
    loss = cls(**kwargs)(pred, label, ignore_index=IGNORE)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    ignored = (label == IGNORE).unsqueeze(1).expand_as(pred)
    assert ignored.any() and (pred.grad[ignored] == 0).all()
    # Changing the logits of ignored pixels does not change the loss.
    moved = pred.detach().clone()
    moved[ignored] += 100.0
    assert cls(**kwargs)(moved, label, ignore_index=IGNORE).item() == pytest.approx(loss.item())


@pytest.mark.parametrize('gamma', [0.0, 0.5, 1.0, 3.0])
def test_focal_gradient_finite_when_saturated(gamma):
    """p_y = 1 exactly in float32: (1 - p_y)^γ must not give a NaN gradient for γ < 1."""
    pred = torch.tensor([40.0, 0.0, 0.0]).reshape(1, 3, 1, 1).requires_grad_()
    loss = SoftmaxFocalLoss(gamma=gamma)(pred, torch.zeros(1, 1, 1, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(pred.grad).all()


def test_all_ignored_batch_gives_zero():
    pred = torch.randn(1, C, 2, 2)
    label = torch.full((1, 2, 2), IGNORE)
    for cls, _, kwargs, _ in CASES:
        for avg_non_ignore in (False, True):
            assert cls(**kwargs, avg_non_ignore=avg_non_ignore)(pred, label).item() == 0.0


def test_limits_reduce_to_mmseg_cross_entropy():
    """ε = 0, α = 0, γ = 0 and β = 0 give mmseg's CE (same masking and averaging)."""
    pred, label = _batch(4)
    for avg_non_ignore in (False, True):
        ce = MODELS.build({'type': 'CrossEntropyLoss', 'avg_non_ignore': avg_non_ignore})
        ce = ce(pred, label, ignore_index=IGNORE)
        for loss in (LabelSmoothingLoss(epsilon=0.0), MarginLoss(alpha=0.0),
                     SoftmaxFocalLoss(gamma=0.0), ConfidencePenaltyLoss(beta=0.0)):
            loss.avg_non_ignore = avg_non_ignore
            assert loss(pred, label, ignore_index=IGNORE).item() == pytest.approx(ce.item())


def test_label_smoothing_matches_torch():
    pred, label = _batch(5)
    expected = F.cross_entropy(pred, label, ignore_index=IGNORE, label_smoothing=0.1)
    out = LabelSmoothingLoss(epsilon=0.1, avg_non_ignore=True)(pred, label, ignore_index=IGNORE)
    assert out.item() == pytest.approx(expected.item(), rel=RTOL)


def test_built_from_registry_with_mmseg_head_arguments():
    for type_name, cls in (('LabelSmoothingLoss', LabelSmoothingLoss),
                           ('MarginLoss', MarginLoss),
                           ('SoftmaxFocalLoss', SoftmaxFocalLoss),
                           ('ConfidencePenaltyLoss', ConfidencePenaltyLoss)):
        loss = MODELS.build({'type': type_name, 'loss_weight': 0.4})
        assert isinstance(loss, cls) and loss.loss_name.startswith('loss_')
    # mmseg's sigmoid focal loss keeps its name.
    assert MODELS.get('FocalLoss') is not SoftmaxFocalLoss


def test_fp16_logits_are_computed_in_float32():
    pred, label = _batch(6, scale=3.0)
    for cls, _, kwargs, _ in CASES:
        full = cls(**kwargs)(pred.float(), label)
        half = cls(**kwargs)(pred.half(), label)
        assert half.dtype == torch.float32
        assert half.item() == pytest.approx(full.item(), rel=2e-3)


@pytest.mark.parametrize('make,match', [
    (lambda: LabelSmoothingLoss(epsilon=1.5), 'epsilon=1.5'),
    (lambda: MarginLoss(margin=-1), 'margin=-1'),
    (lambda: MarginLoss(alpha=-0.1), 'alpha=-0.1'),
    (lambda: SoftmaxFocalLoss(gamma=-2), 'gamma=-2'),
    (lambda: ConfidencePenaltyLoss(beta=-1), 'beta=-1'),
    (lambda: MarginLoss(reduction='avg'), "reduction='avg'"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_labels_and_class_weight_length():
    pred, label = _batch(7)
    label[0, 0, 0] = 11  # e.g. CamVid's unlabelled id left unmapped
    with pytest.raises(ValueError, match='label value 11 is outside'):
        MarginLoss()(pred, label, ignore_index=IGNORE)
    with pytest.raises(ValueError, match='class_weight has 2 entries'):
        MarginLoss(class_weight=[1.0, 2.0])(pred, torch.zeros_like(label))
