"""Post-hoc temperature scaling (docs/method.md §6; Guo et al., "On Calibration of Modern
Neural Networks", ICML 2017): the maths.

- :func:`scale_logits`: ``z / T`` (or ``z_k / T_k`` per class), what a scaled model returns.
- :class:`PixelSample`: a bounded uniform sample of the valid pixels of a dataset, the same
  whatever the order of the images and however they are spread over processes.
- :func:`fit_temperature` (one ``T``) and :func:`fit_class_temperatures` (one ``T_k`` per
  class): the minimisers of the float64 NLL of a sample, found exactly (both problems are
  convex in ``1/T``).
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor

# The searched temperatures; a minimum outside is reported as lying at the bound.
T_RANGE = (0.01, 100.0)
LOG_T_RANGE = (math.log(T_RANGE[0]), math.log(T_RANGE[1]))
_CHUNK = 1 << 18  # pixels per float64 chunk

Temperature = Union[float, Sequence[float]]


def check_temperature(temperature, num_classes: Optional[int] = None) -> Union[float, tuple]:
    """``temperature`` as a float, or a tuple of floats (one per class); a ValueError naming
    the bad value otherwise. Each must be finite and > 0; a per-class one must have
    ``num_classes`` entries (when given)."""
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        values, scalar = [float(temperature)], True
    elif isinstance(temperature, Sequence) and not isinstance(temperature, (str, bytes)) \
            and len(temperature) and all(isinstance(t, (int, float))
                                         and not isinstance(t, bool) for t in temperature):
        values, scalar = [float(t) for t in temperature], False
    else:
        raise ValueError(f'temperature must be a number or a list of numbers (one per class), '
                         f'got {temperature!r}')
    bad = [t for t in values if not 0 < t < math.inf]
    if bad:
        raise ValueError(f'temperatures must be finite and > 0, got {bad[0]!r}')
    if scalar:
        return values[0]
    if num_classes is not None and len(values) != num_classes:
        raise ValueError(f'a per-class temperature needs one value per class: got '
                         f'{len(values)} for {num_classes} classes')
    return tuple(values)


def scale_logits(logits: Tensor, temperature: Temperature, dim: int = 0) -> Tensor:
    """``z / T``, or ``z_k / T_k`` along ``dim`` (the class axis) for a per-class temperature.

    Divided in float64 and rounded once to the dtype of ``logits``: the correctly rounded
    quotient, so every device and every caller gets the same tensor.
    """
    t = torch.as_tensor(temperature, dtype=torch.float64, device=logits.device)
    if t.ndim:
        shape = [1] * logits.ndim
        shape[dim] = -1
        t = t.view(shape)
    return (logits.double() / t).to(logits.dtype)


def _image_generator(seed: int, name: str) -> torch.Generator:
    """A generator seeded by the sample's seed and an image's name (its path)."""
    digest = hashlib.blake2b(f'{seed}\0{name}'.encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, 'little') >> 1)


class PixelSample:
    """A uniform sample without replacement of at most ``capacity`` valid pixels.

    Every valid pixel draws a key uniform in [0, 1) from a generator seeded by ``seed`` and
    its image's name; the ``capacity`` pixels with the smallest keys are kept (bottom-k
    sampling). A pixel's key does not depend on which other images were offered, or in which
    order, so the sample of a dataset is one set whatever the order of the images, and
    :meth:`merge` of the samples of two parts of a dataset is the sample of the whole: the
    ranks of a distributed run combine exactly. Memory: ``capacity`` pixels (logits in
    float32, keys in float64) plus one image.

    Args:
        capacity (int): Most pixels kept.
        ignore_index (int): Label of pixels left out. Default: 255.
        seed (int): Seed of the keys. Default: 0.
    """

    def __init__(self, capacity: int, ignore_index: int = 255, seed: int = 0) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f'the pixel cap must be a positive int, got {capacity!r}')
        self.capacity = capacity
        self.ignore_index = ignore_index
        self.seed = seed
        self.seen = 0
        self.keys = torch.empty(0, dtype=torch.float64)
        self.logits: Optional[Tensor] = None
        self.labels = torch.empty(0, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, logits: Tensor, labels: Tensor, name: str) -> None:
        """Offer the pixels of one image: ``logits (C, H, W)``, ``labels (H, W)`` (or any
        shape with ``H * W`` elements), ``name`` its identity (e.g. the image path)."""
        z = logits.detach().reshape(logits.shape[0], -1).t()
        y = labels.reshape(-1).to(device=z.device, dtype=torch.int64)
        if len(y) != len(z):
            raise ValueError(f'the logits cover {len(z)} pixels but the labels {len(y)}: the '
                             'logits must be at the label size')
        valid = y != self.ignore_index
        z, y = z[valid].float().cpu(), y[valid].cpu()
        keys = torch.rand(len(y), generator=_image_generator(self.seed, name),
                          dtype=torch.float64)
        self._offer(keys, z, y, seen=len(y))

    def merge(self, other: 'PixelSample') -> None:
        """Add the pixels of ``other`` (a sample of other images, same cap and seed)."""
        if other.logits is not None:
            self._offer(other.keys, other.logits, other.labels, seen=other.seen)
        else:
            self.seen += other.seen

    def _offer(self, keys: Tensor, logits: Tensor, labels: Tensor, seen: int) -> None:
        self.seen += seen
        if self.logits is None:
            self.logits = logits[:0]
        elif logits.shape[1] != self.logits.shape[1]:
            raise ValueError(f'images with {logits.shape[1]} and {self.logits.shape[1]} '
                             'classes in one sample')
        if len(self.keys) == self.capacity:  # full: only keys below the largest can enter
            enter = keys < self.keys.max()
            keys, logits, labels = keys[enter], logits[enter], labels[enter]
        self.keys = torch.cat([self.keys, keys])
        self.logits = torch.cat([self.logits, logits])
        self.labels = torch.cat([self.labels, labels])
        if len(self.keys) > self.capacity:
            keep = torch.topk(self.keys, self.capacity, largest=False).indices
            self.keys, self.logits, self.labels = (
                self.keys[keep], self.logits[keep], self.labels[keep])

    def pixels(self) -> tuple[Tensor, Tensor]:
        """The sampled ``logits (N, C)`` and ``labels (N,)``, in the order of their keys: the
        same tensors however the sample was put together."""
        if self.logits is None:
            raise ValueError('the sample holds no image')
        order = torch.sort(self.keys, stable=True).indices
        return self.logits[order], self.labels[order]


def nll(logits: Tensor, labels: Tensor, temperature: Temperature) -> float:
    """Mean ``-log softmax(z / T)_y`` (per-class: ``z_k / T_k``) in float64, chunked."""
    if len(labels) == 0:
        raise ValueError('no pixel to compute the NLL of')
    total = 0.0
    for start in range(0, len(labels), _CHUNK):
        z = scale_logits(logits[start:start + _CHUNK].double(), temperature, dim=1)
        total += float(torch.nn.functional.cross_entropy(
            z, labels[start:start + _CHUNK], reduction='sum'))
    return total / len(labels)


def _nll_slope(logits: Tensor, labels: Tensor, log_t: float) -> float:
    """d NLL / d log T. With β = 1/T, dNLL/dβ = mean(E_p[z] - z_y) grows with β (convexity),
    and dβ/dlogT = -β, so this slope grows with log T: its sign change is the minimum."""
    beta = math.exp(-log_t)
    total = 0.0
    for start in range(0, len(labels), _CHUNK):
        z = logits[start:start + _CHUNK].double()
        y = labels[start:start + _CHUNK]
        p = torch.softmax(beta * z, dim=1)
        total += float(((p * z).sum(1) - z.gather(1, y[:, None])[:, 0]).sum())
    return -beta * total / len(labels)


def fit_temperature(logits: Tensor, labels: Tensor, tol: float = 1e-10) -> tuple[float, bool]:
    """The ``T`` in :data:`T_RANGE` minimising the NLL of ``logits (N, C)`` / ``labels (N,)``.

    Bisection on the sign of ``dNLL/dlog T`` (see :func:`_nll_slope`) down to ``tol`` in
    ``log T``. Returns ``(T, at_bound)``; ``at_bound`` says the minimum lies at (or beyond)
    an end of the range, e.g. when every pixel is classified correctly and the NLL keeps
    falling as ``T -> 0``.
    """
    if len(labels) == 0:
        raise ValueError('no valid pixel to fit the temperature on: the fit split holds only '
                         'ignored labels')
    lo, hi = LOG_T_RANGE
    if _nll_slope(logits, labels, lo) >= 0:
        return math.exp(lo), True
    if _nll_slope(logits, labels, hi) <= 0:
        return math.exp(hi), True
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if _nll_slope(logits, labels, mid) > 0:
            hi = mid
        else:
            lo = mid
    return math.exp(0.5 * (lo + hi)), False


def _nll_of_beta(logits: Tensor, labels: Tensor, beta: Tensor, derivatives: bool = False):
    """The NLL of ``softmax(β ⊙ z)`` and, with ``derivatives``, its gradient and Hessian in β.

    With ``p = softmax(β ⊙ z)``: ``∂/∂β_k = mean((p_k - [y = k]) z_k)`` and
    ``∂²/∂β_k∂β_l = mean(p_k z_k² [k = l] - p_k z_k p_l z_l)`` (a covariance: convex).
    """
    num = len(labels)
    total = torch.zeros((), dtype=torch.float64)
    grad = torch.zeros_like(beta)
    hess = torch.zeros(len(beta), len(beta), dtype=torch.float64)
    for start in range(0, num, _CHUNK):
        z = logits[start:start + _CHUNK].double()
        y = labels[start:start + _CHUNK]
        u = z * beta
        total += (torch.logsumexp(u, 1) - u.gather(1, y[:, None])[:, 0]).sum()
        if derivatives:
            pz = torch.softmax(u, 1) * z
            grad += pz.sum(0)
            grad.index_add_(0, y, -z.gather(1, y[:, None])[:, 0])
            hess += torch.diag((pz * z).sum(0)) - pz.t() @ pz
    if not derivatives:
        return float(total) / num
    return float(total) / num, grad / num, hess / num


def fit_class_temperatures(logits: Tensor, labels: Tensor, start: Optional[float] = None,
                           max_iter: int = 100) -> dict:
    """One temperature per class, ``T_k`` in :data:`T_RANGE`, minimising the NLL of
    ``softmax(z_k / T_k)`` over ``logits (N, C)`` / ``labels (N,)`` (docs/method.md §6).

    The NLL is convex in ``β = 1/T`` (a log-sum-exp of a linear map of β, minus a linear
    term), so projected Newton steps in β with a backtracking line search (Armijo) reach its
    minimum over the box to float64 precision. Classes without a pixel in the sample carry
    no evidence and keep ``start`` (by default the single temperature of
    :func:`fit_temperature`).

    Returns:
        dict: ``temperatures`` (list of C floats), ``start`` (the single T they started
        from), ``at_bound`` (class indices whose T_k lies at an end of the range),
        ``without_pixels`` (class indices kept at ``start``), ``iterations``.
    """
    if len(labels) == 0:
        raise ValueError('no valid pixel to fit the temperatures on: the fit split holds only '
                         'ignored labels')
    num_classes = logits.shape[1]
    if start is None:
        start, _ = fit_temperature(logits, labels)
    beta = torch.full((num_classes,), 1.0 / start, dtype=torch.float64)
    lo, hi = 1.0 / T_RANGE[1], 1.0 / T_RANGE[0]
    movable = torch.bincount(labels, minlength=num_classes) > 0
    iterations = 0
    for iterations in range(1, max_iter + 1):
        value, grad, hess = _nll_of_beta(logits, labels, beta, derivatives=True)
        pinned = ((beta <= lo) & (grad > 0)) | ((beta >= hi) & (grad < 0))
        free = movable & ~pinned
        if not bool(free.any()):
            break
        g, h = grad[free], hess[free][:, free]
        ridge = 1e-12 * float(h.diagonal().mean().clamp(min=1e-300))
        factor, info = torch.linalg.cholesky_ex(h + ridge * torch.eye(len(g), dtype=h.dtype))
        while int(info):  # singular in some direction (a class whose logits are all 0)
            ridge *= 1e3
            factor, info = torch.linalg.cholesky_ex(h + ridge * torch.eye(len(g), dtype=h.dtype))
        step = -torch.cholesky_solve(g[:, None], factor)[:, 0]
        if float(-(g @ step)) <= 1e-24:  # Newton decrement: within rounding of the minimum
            break
        t, trial_value = 1.0, math.inf
        while t > 1e-12:
            trial = beta.clone()
            trial[free] = (beta[free] + t * step).clamp(lo, hi)
            trial_value = _nll_of_beta(logits, labels, trial)
            if trial_value <= value + 1e-4 * float(grad @ (trial - beta)):
                break
            t /= 2
        if not trial_value < value:  # no decrease left that float64 resolves: the minimum
            break
        beta = trial
    temperatures = [float(start) if not bool(movable[k]) else 1.0 / float(beta[k])
                    for k in range(num_classes)]
    return {
        'temperatures': temperatures,
        'start': float(start),
        'at_bound': [k for k in range(num_classes) if bool(movable[k])
                     and (beta[k] <= lo or beta[k] >= hi)],
        'without_pixels': [k for k in range(num_classes) if not bool(movable[k])],
        'iterations': iterations,
    }
