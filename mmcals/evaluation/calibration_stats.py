"""Streaming pixel calibration statistics: fixed-size sums from which the metrics of
docs/method.md §4 are computed exactly (ECE, MCE, CECE, NLL, Brier) or within a stated bound
(aECE).

:class:`CalibrationStats` is the one piece of state: ``update(logits, labels)`` reduces the
valid pixels of an image to a few ``(classes x bins)`` tables, ``+=`` merges two of them
(images, ranks), ``summary()`` turns them into the numbers, the per-class table and the
reliability curve (the ``calibration.json`` dict). Memory does not grow with the dataset.

Conventions (docs/method.md §4):

- ``p = softmax(z)``, confidence ``c = max_k p_k``, prediction ``argmax_k z_k`` (the first
  maximal logit on ties, as ``torch.argmax`` and mmseg's ``pred_sem_seg``).
- Equal-width bins: bin ``b`` (1-based) holds ``p ∈ ((b-1)/B, b/B]``, ``p = 0`` in the
  first, for the confidence (ECE, MCE) as for each class's probability (CECE). The index is
  ``clamp(ceil(B·p), 1, B)`` computed in the working dtype (``B·p`` as ``e · (B · (1 / Σ e))``
  with ``e = 2^((z - z_max) log2 e)``), so a value within a few ulp of an edge goes where
  rounding puts it. torchmetrics' ``*CalibrationError`` instead bins ``[(b-1)/B, b/B)``
  (``bucketize(right=True)``) plus an extra bin for ``c = 1``: the two agree when no
  confidence equals a multiple of ``1/B``.
- aECE (equal-mass bins) is defined like ``np.array_split``: sort the valid pixels by
  confidence and cut the sequence into ``B`` runs whose sizes differ by at most one. Streaming
  it uses a fine histogram (see :func:`adaptive_ece`); the error bound is computed with it.

Precision: the work runs in float32 (float64 for float64 logits; half precision is promoted).
Counts are integers; confidence sums are accumulated in float64; the class-wise probability
sums (CECE) and the Brier sums are summed per chunk of pixels in the working dtype, then in
float64. On float32 Cityscapes-sized logits every metric is within 1e-5 points of the
float64 computation on the same logits. A float32
accumulator is not enough at dataset scale: torchmetrics' float32 bin sums report an ECE of
7.8% where the float64 value is 12.5% after 20 Cityscapes-sized images
(benchmarks/bench_calibration_metric.py).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import torch
from torch import Tensor

# aECE's fine histogram: bins uniform in u = -log(1 - c) over [0, FINE_RANGE), so a bin's width
# in c is about (1 - c) * FINE_RANGE / FINE_BINS: 0.9% of the distance to 1 wherever the
# confidences pile up. 36 ≈ -log(2^-52) reaches float64's resolution below 1; the last bin
# also holds everything above, c = 1 included.
FINE_BINS = 4096
FINE_RANGE = 36.0

# Pixels per chunk = _CHUNK_ELEMENTS // num_classes on CPU: each float32 temporary of a chunk
# stays around 4 MiB, near the caches (the fastest size measured on 2 cores). Accelerators
# get larger chunks: fewer kernel launches.
_CHUNK_ELEMENTS = 1 << 20
_CHUNK_ELEMENTS_ACCELERATOR = 1 << 24
_LOG2E = 1.4426950408889634  # log2(e)
# Copies of the class-wise table that consecutive pixels are spread over (see _ImageSums).
_LANES = 8


def equal_width_bin(prob: Tensor, num_bins: int) -> Tensor:
    """1-based equal-width bin of each probability: ``b`` such that ``p ∈ ((b-1)/B, b/B]``.

    ``p = 0`` goes to bin 1 (docs/method.md §4). Returns int32.
    """
    return (prob * num_bins).ceil_().to(torch.int32).clamp_(1, num_bins)


def fine_bin(conf: Tensor, fine_bins: int = FINE_BINS, fine_range: float = FINE_RANGE,
             dtype: torch.dtype = torch.int64) -> Tensor:
    """Index of each confidence in the fine histogram: ``floor(-log(1 - c) * F / range)``."""
    u = torch.log1p(-conf).mul_(-fine_bins / fine_range)
    return u.clamp_(max=fine_bins - 1).to(dtype)  # c = 1 gives inf: clamp before casting


def fine_bin_edges(fine_bins: int = FINE_BINS,
                   fine_range: float = FINE_RANGE) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper confidence of each fine bin (the last one reaches 1)."""
    u = np.arange(fine_bins + 1) * (fine_range / fine_bins)
    edges = -np.expm1(-u)
    edges[-1] = 1.0
    return edges[:-1], edges[1:]


class CalibrationStats:
    """Fixed-size sufficient statistics of pixel calibration (docs/method.md §4).

    Tables, all summed over the valid pixels seen so far (``C`` classes, ``B`` bins):

    - ``top_count/top_conf/top_correct [C, B]``: pixels by ground-truth class and equal-width
      bin of their confidence; count, sum of confidences, number correctly predicted. Summed
      over classes they give ECE and MCE; per row, the top-label ECE of one class's pixels.
    - ``cls_prob/cls_hit [C, B]``: for each class ``k``, all pixels by the bin of ``p_k``;
      sum of ``p_k``, number labelled ``k``. CECE needs nothing else (the bin's count cancels
      out of ``count · |hit/count - prob/count|``). Not filled when ``top_label_only``.
    - ``fine_count/fine_conf/fine_correct [F]``: the fine confidence histogram for aECE.
    - ``nll``, ``brier``: sums of ``-log p_y`` and ``Σ_k (p_k - [y = k])²`` (Brier not filled
      when ``top_label_only``).

    Args:
        num_classes (int): Number of classes ``C`` (channels of the logits).
        num_bins (int): Number of equal-width (and equal-mass) bins ``B``. Default: 15.
        ignore_index (int): Label value of pixels left out. Default: 255.
        top_label_only (bool): Skip what needs every class's normalised probability: the
            class-wise tables (CECE) and the Brier score. What remains (ECE, MCE, aECE, NLL,
            confidence, accuracy) needs one pass over the logits. Default: False.
        device (str | torch.device): Where the tables live; the per-image work runs on the
            logits' device and only the tables move. Default: 'cpu'.
        chunk_size (int, optional): Pixels per chunk; None picks about 4 MiB per float32
            temporary on CPU and 64 MiB elsewhere. Default: None.

    On CPU, ``update`` shares the chunks of an image out to ``torch.get_num_threads()``
    threads, each running its ops single-threaded (the global torch thread count is set to 1
    meanwhile and restored after), so other torch work must not run concurrently in the
    same process.
    """

    def __init__(self, num_classes: int, num_bins: int = 15, ignore_index: int = 255,
                 top_label_only: bool = False, device='cpu',
                 chunk_size: Optional[int] = None) -> None:
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f'num_classes must be an int >= 2, got {num_classes!r}: softmax '
                             'calibration needs at least two classes (use out_channels=2 for '
                             'binary segmentation)')
        if not isinstance(num_bins, int) or num_bins < 1:
            raise ValueError(f'num_bins must be a positive int, got {num_bins!r}')
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f'chunk_size must be a positive int or None, got {chunk_size!r}')
        self.num_classes = num_classes
        self.num_bins = num_bins
        self.ignore_index = ignore_index
        self.top_label_only = top_label_only
        self.chunk_size = chunk_size
        self.device = torch.device(device)
        shape = (num_classes, num_bins)
        f64 = {'dtype': torch.float64, 'device': self.device}
        i64 = {'dtype': torch.int64, 'device': self.device}
        self.top_count = torch.zeros(shape, **i64)
        self.top_conf = torch.zeros(shape, **f64)
        self.top_correct = torch.zeros(shape, **i64)
        self.cls_prob = torch.zeros(shape, **f64)
        self.cls_hit = torch.zeros(shape, **i64)
        self.fine_count = torch.zeros(FINE_BINS, **i64)
        self.fine_conf = torch.zeros(FINE_BINS, **f64)
        self.fine_correct = torch.zeros(FINE_BINS, **i64)
        self.nll = torch.zeros((), **f64)
        self.brier = torch.zeros((), **f64)

    _TABLES = ('top_count', 'top_conf', 'top_correct', 'cls_prob', 'cls_hit',
               'fine_count', 'fine_conf', 'fine_correct', 'nll', 'brier')

    @property
    def num_pixels(self) -> int:
        return int(self.top_count.sum())

    def empty_like(self) -> CalibrationStats:
        """A zeroed instance with the same settings."""
        return CalibrationStats(self.num_classes, self.num_bins, self.ignore_index,
                                self.top_label_only, self.device, self.chunk_size)

    def _check_compatible(self, other: CalibrationStats) -> None:
        mine = (self.num_classes, self.num_bins, self.top_label_only)
        theirs = (other.num_classes, other.num_bins, other.top_label_only)
        if mine != theirs:
            raise ValueError('cannot merge CalibrationStats with different (num_classes, '
                             f'num_bins, top_label_only): {mine} and {theirs}')

    def __iadd__(self, other: CalibrationStats) -> CalibrationStats:
        self._check_compatible(other)
        for name in self._TABLES:
            getattr(self, name).add_(getattr(other, name).to(self.device))
        return self

    def __add__(self, other: CalibrationStats) -> CalibrationStats:
        total = self.empty_like()
        total += self
        total += other
        return total

    def __getstate__(self) -> dict:
        # Collected across ranks by pickling: always as CPU tensors.
        state = dict(self.__dict__)
        state['device'] = torch.device('cpu')
        for name in self._TABLES:
            state[name] = state[name].cpu()
        return state

    # ------------------------------------------------------------------------------ update

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Add the valid pixels of one image.

        Args:
            logits (Tensor): Raw class scores, shape ``(C, *spatial)`` (e.g. mmseg's
                ``seg_logits.data``, ``(C, H, W)``), any float dtype; half precision is
                computed in float32.
            labels (Tensor): Ground truth, shape ``spatial`` or ``(1, *spatial)``, integer
                class indices in ``[0, C)`` or ``ignore_index``.
        """
        if logits.ndim < 2 or logits.shape[0] != self.num_classes:
            raise ValueError(f'logits must have shape (num_classes={self.num_classes}, '
                             f'*spatial), got {tuple(logits.shape)}')
        if not logits.is_floating_point():
            raise ValueError(f'logits must be a float tensor, got dtype {logits.dtype}')
        spatial = tuple(logits.shape[1:])
        label_shape = tuple(labels.shape)
        if label_shape[:1] == (1,) and label_shape[1:] == spatial:
            label_shape = label_shape[1:]
        if label_shape != spatial:
            raise ValueError(f'labels of shape {tuple(labels.shape)} do not match logits of '
                             f'shape {tuple(logits.shape)}: expected {spatial} or (1, *{spatial})')
        if logits.dtype != torch.float64:
            logits = logits.float()
        z = logits.reshape(self.num_classes, -1)
        y = labels.reshape(-1).to(device=z.device, dtype=torch.int64)
        chunk = self.chunk_size or max(1, (_CHUNK_ELEMENTS if z.device.type == 'cpu'
                                           else _CHUNK_ELEMENTS_ACCELERATOR) // self.num_classes)
        starts = list(range(0, z.shape[1], chunk))
        valid = y != self.ignore_index
        threads = torch.get_num_threads()
        workers = min(threads, len(starts)) if z.device.type == 'cpu' else 1
        if workers <= 1:
            parts = [self._reduce(z, y, valid, starts, chunk)]
        else:
            # A chunk's few dozen ops are too small to split across cores: when the cores are
            # shared, every parallel region waits for a descheduled thread (measured 4x slower
            # than torchmetrics under load). Whole chunks go to threads instead, each op on
            # one core; the split is fixed, so the sums do not depend on timing.
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(workers) as pool:
                    parts = list(pool.map(
                        lambda i: self._reduce(z, y, valid, starts[i::workers], chunk),
                        range(workers)))
            finally:
                torch.set_num_threads(threads)
        for part in parts:
            for name, value in part.tables().items():
                getattr(self, name).add_(value.to(self.device))

    def _reduce(self, z: Tensor, y: Tensor, valid: Tensor, starts: Sequence[int],
                chunk: int) -> _ImageSums:
        """The tables of the chunks of pixels beginning at ``starts``."""
        image = _ImageSums(self.num_classes, self.num_bins, self.top_label_only)
        with torch.no_grad():  # grad mode is per thread
            for start in starts:
                zc, yc = z[:, start:start + chunk], y[start:start + chunk]
                keep = valid[start:start + chunk]
                if not bool(keep.all()):
                    zc, yc = zc[:, keep], yc[keep]
                if yc.numel():
                    image.add_chunk(zc, yc)
        return image

    # ----------------------------------------------------------------------------- compute

    def summary(self, class_names: Optional[Sequence[str]] = None,
                classes: Optional[Sequence[int]] = None) -> dict:
        """The numbers of docs/method.md §4 as the ``calibration.json`` dict.

        Metric values (``metrics``, ``per_class``, ``aECE_error_bound``) are in percent;
        ``reliability`` holds fractions. Undefined values (no valid pixel, an empty bin, a
        class without pixels, CECE and Brier when ``top_label_only``) are None.

        Args:
            class_names (Sequence[str], optional): One name per class; default '0', '1', ...
            classes (Sequence[int], optional): Class indices averaged into CECE; those without
                ground-truth pixels are skipped. Default: every class with pixels.
        """
        num_classes, num_bins = self.num_classes, self.num_bins
        if class_names is None:
            class_names = [str(k) for k in range(num_classes)]
        if len(class_names) != num_classes:
            raise ValueError(f'{len(class_names)} class names given for {num_classes} classes')
        wanted = range(num_classes) if classes is None else list(classes)
        for k in wanted:
            if not isinstance(k, (int, np.integer)) or not 0 <= k < num_classes:
                raise ValueError(f'class index {k!r} in classes is not in [0, {num_classes})')
        arrays = {name: getattr(self, name).cpu().numpy() for name in self._TABLES}
        count = arrays['top_count'].sum(0)
        conf = arrays['top_conf'].sum(0)
        correct = arrays['top_correct'].sum(0)
        pixels_per_class = arrays['top_count'].sum(1)
        total = int(count.sum())

        def percent(value):
            return None if value is None or not math.isfinite(value) else 100.0 * float(value)

        nonempty = count > 0
        with np.errstate(invalid='ignore', divide='ignore'):
            bin_conf = np.where(nonempty, conf / np.maximum(count, 1), np.nan)
            bin_acc = np.where(nonempty, correct / np.maximum(count, 1), np.nan)
        metrics = dict.fromkeys(('ECE', 'MCE', 'aECE', 'CECE', 'NLL', 'Brier',
                                 'mean_confidence', 'pixel_accuracy'))
        bound = None
        per_class_ece = [None] * num_classes
        per_class_cece = [None] * num_classes
        cece_classes = []
        if total:
            metrics['ECE'] = percent(np.abs(correct - conf).sum() / total)
            metrics['MCE'] = percent(np.abs(bin_acc - bin_conf)[nonempty].max())
            aece, aece_bound = adaptive_ece(arrays['fine_count'], arrays['fine_conf'],
                                            arrays['fine_correct'], num_bins)
            metrics['aECE'], bound = percent(aece), percent(aece_bound)
            metrics['NLL'] = percent(arrays['nll'] / total)
            if not self.top_label_only:
                metrics['Brier'] = percent(arrays['brier'] / total)
            metrics['mean_confidence'] = percent(conf.sum() / total)
            metrics['pixel_accuracy'] = percent(correct.sum() / total)
            gaps = np.abs(arrays['top_correct'] - arrays['top_conf']).sum(1)
            for k in np.flatnonzero(pixels_per_class):
                per_class_ece[k] = percent(gaps[k] / pixels_per_class[k])
            if not self.top_label_only:
                cece_k = np.abs(arrays['cls_hit'] - arrays['cls_prob']).sum(1) / total
                per_class_cece = [percent(v) for v in cece_k]
                cece_classes = [k for k in wanted if pixels_per_class[k] > 0]
                if cece_classes:
                    metrics['CECE'] = percent(cece_k[cece_classes].mean())
        edges = np.arange(num_bins + 1) / num_bins
        return {
            'classes': list(class_names),
            'num_bins': num_bins,
            'num_pixels': total,
            'metrics': metrics,
            'aECE_error_bound': bound,
            'cece_classes': [class_names[k] for k in cece_classes],
            'per_class': [{'class': class_names[k], 'pixels': int(pixels_per_class[k]),
                           'CECE': per_class_cece[k], 'ECE': per_class_ece[k]}
                          for k in range(num_classes)],
            'reliability': {
                'bin_lower': edges[:-1].tolist(),
                'bin_upper': edges[1:].tolist(),
                'count': [int(n) for n in count],
                'confidence': [None if not n else float(v) for n, v in zip(count, bin_conf)],
                'accuracy': [None if not n else float(v) for n, v in zip(count, bin_acc)],
            },
        }


class _ImageSums:
    """The tables of one image, on the logits' device, filled chunk by chunk.

    Costs that shape ``add_chunk``, measured (best of repeated runs) on 1M-element float32
    chunks (19 classes), one core of an AVX-512 CPU, torch 2.13:

    - ``exp`` takes 1.2 ms, ``exp2`` 0.5 ms: probabilities are ``2^((z - z_max) log2 e)``.
      (``torch.log_softmax`` over the class dimension, one fused kernel, is barely faster than
      the five separate passes and gives no exact 1 for the winner; ``torch.softmax`` is
      twice as slow.)
    - ``torch.max(z, 0)`` with indices costs 50 times ``amax``: no argmax (see ``_correct``).
    - ``bincount`` over the ``C x n`` values laid out class by class is slow because
      consecutive values fall into the same bin and each addition waits for the previous
      one: spreading consecutive pixels over ``_LANES`` copies of the table helps 2x. Its
      index is int16 where the table allows (the tables are small): a weighted ``bincount``
      of 10M values takes 8 ms with an int32 index, 12 ms with int64, and index plus binning
      of the low-confidence pixels' values 25% less time in int16 than in int32.
    - ``nonzero`` costs 1.5-6 ns per element (the more random the mask, the slower) against
      0.3-0.7 ns for binning a value: compacting the class-wise values above ``1/B`` before
      binning (idea: bin only those, the first bin by subtraction) costs more than binning
      all of them, so pixels are selected once per chunk and never single values.
    - Summing ``(B p)²`` with ``torch.sum`` (pairwise) is as fast as the matrix-vector
      product it replaced and 300 times more accurate in float32.
    """

    def __init__(self, num_classes: int, num_bins: int, top_label_only: bool) -> None:
        self.num_classes, self.num_bins = num_classes, num_bins
        self.top_label_only = top_label_only
        self.sums: dict = {}

    def _add(self, name: str, value: Tensor) -> None:
        value = value.to(torch.int64 if not value.is_floating_point() else torch.float64)
        if name in self.sums:
            self.sums[name] += value
        else:
            self.sums[name] = value

    def tables(self) -> dict:
        """The image's tables, from the raw per-chunk sums (split, folded, combined here
        once rather than per chunk)."""
        num_classes, num_bins = self.num_classes, self.num_bins
        sums = dict(self.sums)
        tables = {}
        for prefix in ('top', 'fine'):
            if f'{prefix}_raw_count' not in sums:
                continue
            counts, conf_sums = sums.pop(f'{prefix}_raw_count'), sums.pop(f'{prefix}_raw_conf')
            half = counts.numel() // 2
            tables[f'{prefix}_count'] = counts[:half] + counts[half:]
            tables[f'{prefix}_correct'] = counts[half:]
            tables[f'{prefix}_conf'] = conf_sums[:half] + conf_sums[half:]
        if 'cls_rows' in sums:
            # Simple pixels: the label's entry in bin B, every other class's in bin 1.
            rows, winners = sums.pop('cls_rows'), sums.pop('cls_winners')
            prob = torch.zeros(num_classes, num_bins, dtype=torch.float64, device=rows.device)
            prob[:, -1] = winners
            prob[:, 0] = rows - winners
            lanes = sums.pop('cls_lanes', None)
            if lanes is not None:
                width = num_bins + 1
                lanes = lanes.view(_LANES, -1).sum(0) / num_bins
                prob += _fold_zero_bin(lanes, width).view(num_classes, num_bins)
            tables['cls_prob'] = prob
        tables.update(sums)
        shapes = {'fine_count': (FINE_BINS,), 'fine_conf': (FINE_BINS,),
                  'fine_correct': (FINE_BINS,), 'nll': (), 'brier': ()}
        return {name: value.reshape(shapes.get(name, (num_classes, num_bins)))
                for name, value in tables.items()}

    def add_chunk(self, z: Tensor, y: Tensor) -> None:
        """Add valid pixels: logits ``z [C, n]`` (float32/64), labels ``y [n]`` in [0, C)."""
        num_classes, num_bins = self.num_classes, self.num_bins
        n = y.numel()
        low, high = torch.aminmax(y)
        if int(low) < 0 or int(high) >= num_classes:
            bad = int(low) if int(low) < 0 else int(high)
            raise ValueError(f'label value {bad} is neither a class index in [0, {num_classes}) '
                             "nor ignore_index: check the dataset's labels or the metric's "
                             'ignore_index')
        z_max = z.amax(0)
        shifted = torch.sub(z, z_max)  # the winner's entry is exactly 0
        flat_label = _pixel_index(n, z.device).add(y, alpha=n)  # (y_i, i) in [C, n]
        shifted_label = shifted.view(-1).index_select(0, flat_label)  # z_y - z_max
        # exp(x) = 2^(x log2 e): the rounding of the product adds |x| ulp to p's relative error
        # (1e-6 at p = 1e-7 in float32); the winner's entry stays exactly 1.
        exp = shifted.mul_(_LOG2E).exp2_()
        total = exp.sum(0)
        # -log p_y = log Σ exp(z - z_max) - (z_y - z_max). total is in [1, C] unless the logits
        # hold NaN or inf, which then shows in this sum (checked only when it is not finite).
        nll = (total.log().sum(dtype=torch.float64)
               - shifted_label.sum(dtype=torch.float64))
        if not math.isfinite(float(nll)) and not math.isfinite(float(total.sum())):
            raise ValueError('logits contain NaN or infinite values; calibration needs finite '
                             'scores')
        self._add('nll', nll)
        conf = total.reciprocal()
        correct = self._correct(z, y, z_max, shifted_label, total, exp,
                                overwrite=self.top_label_only)
        # One index per table pair: correct pixels are counted in a second copy of the bins.
        conf64 = conf.to(torch.float64)
        n_top = num_classes * num_bins
        dtype = _index_dtype(2 * max(n_top, FINE_BINS))
        correct_key = correct.to(dtype)
        # Entry of bin 1 of the label's row (equal-width bins are 1-based)
        label_key = y.to(dtype).mul_(num_bins).sub_(1)
        # conf in [1/C, 1]: ceil(B conf) is already in [1, B]
        top = (conf * num_bins).ceil_().to(dtype).add_(label_key).add_(correct_key, alpha=n_top)
        self._add('top_raw_count', torch.bincount(top, minlength=2 * n_top))
        self._add('top_raw_conf', torch.bincount(top, weights=conf64, minlength=2 * n_top))
        fine = fine_bin(conf, dtype=dtype).add_(correct_key, alpha=FINE_BINS)
        self._add('fine_raw_count', torch.bincount(fine, minlength=2 * FINE_BINS))
        self._add('fine_raw_conf', torch.bincount(fine, weights=conf64, minlength=2 * FINE_BINS))
        if not self.top_label_only:
            self._add_class_wise(exp, conf, y, label_key, shifted_label, correct)

    def _add_class_wise(self, exp: Tensor, conf: Tensor, y: Tensor, label_key: Tensor,
                        shifted_label: Tensor, correct: Tensor) -> None:
        """The class-wise tables (CECE) and the Brier score of a chunk.

        ``exp = exp(z - z_max) [C, n]`` (overwritten), ``conf = 1 / Σ_k exp``,
        ``label_key = y B - 1``, ``shifted_label = z_y - z_max``, ``correct`` whether the
        prediction is the label.

        Class ``k``'s bin is ``ceil(B p_k)``, ``B p_k`` computed as ``exp_k · (B conf)`` as
        for the confidence. A *simple* pixel is correct and confident (``conf > (B-1)/B``,
        8 ulp of margin for the rounding): its label is the winner, in bin ``B``, and every
        other class is in bin 1 (their sum is ``1 - conf < 1/B``), so it costs a few
        operations per pixel: bin 1 of class ``k`` gets ``Σ_i p_ki`` over them (one
        matrix-vector product) minus the winners' sum, a difference in float64 of sums in
        the working dtype, whose rounding (relative ``ε log2 n``) is below that of the
        probabilities themselves. Only the other pixels (low-confidence or wrong: 57% of the
        pixels of the benchmark's seglike logits, fewer on a trained model's) have all their
        classes binned, in one ``bincount``.
        """
        num_classes, num_bins = self.num_classes, self.num_bins
        n = conf.numel()
        size = num_classes * num_bins
        scale = conf * num_bins
        eps = torch.finfo(exp.dtype).eps
        simple = correct & (conf > (num_bins - 1) / num_bins + 8 * eps)
        scaled = exp.mul_(scale)  # B p_k
        weight = simple.to(exp.dtype)
        rows = torch.mv(scaled, weight).to(torch.float64) / num_bins  # Σ_i p_ki, simple pixels
        self._add('cls_rows', rows)
        self._add('cls_winners', torch.bincount(y, weights=weight.mul_(conf).to(torch.float64),
                                                minlength=num_classes))
        # The other pixels: every class binned, in lane i mod L of the table.
        others = (~simple).nonzero()[:, 0]
        if others.numel():
            part = scaled.index_select(1, others)
            width = num_bins + 1
            table = _LANES * num_classes * width
            dtype = _index_dtype(table)
            # Bin 0 (p = 0 exactly) is folded into bin 1 afterwards, which saves a clamp over
            # the C x m values.
            index = part.ceil().to(dtype).add_(
                _lane_offsets(num_classes, width, part.shape[1], dtype, part.device))
            self._add('cls_lanes', torch.bincount(index.view(-1), weights=part.view(-1),
                                                  minlength=table))
        # B p_y: the label's entry of scaled, recomputed with the same operations on the same
        # value (bit for bit), which is cheaper than gathering it from the C x n values.
        scaled_label = shifted_label.mul(_LOG2E).exp2_().mul_(scale)
        labelled = scaled_label.sum(dtype=torch.float64) / num_bins
        hit = scaled_label.ceil_().to(label_key.dtype).clamp_(min=1).add_(label_key)
        self._add('cls_hit', torch.bincount(hit, minlength=size))
        # Σ_k (p_k - [y=k])² = Σ_k p_k² - 2 p_y + 1; Σ (B p)² summed pairwise by torch.sum
        squares = scaled.square_().sum().to(torch.float64) / num_bins ** 2
        self._add('brier', squares - 2 * labelled + n)

    @staticmethod
    def _correct(z: Tensor, y: Tensor, z_max: Tensor, shifted_label: Tensor, total: Tensor,
                 exp: Tensor, overwrite: bool = False) -> Tensor:
        """Whether ``argmax_k z_k`` (the first maximum) is the label.

        ``shifted_label = z_y - z_max``; ``exp = exp(z - z_max) [C, n]``, ``total`` its sum
        over classes; ``overwrite``: ``exp`` is not needed afterwards.
        """
        correct = shifted_label == 0
        # Correct unless an earlier class ties with the label's logit. Tied classes have
        # exp == 1 exactly (as may classes within an ulp of the maximum), so a tie needs
        # total >= 2 and two entries exp == 1: only those pixels are compared class by class,
        # on the logits. Gathering their exp entries costs about 2 ns a value against 0.3 ns
        # for a pass of floor(exp) over the whole chunk: when more than 1 pixel in 10 is a
        # candidate, that pass first counts the entries equal to 1 (floor(exp) is 1 there, 0
        # elsewhere; summed in float32 up to 2^24 values, where it is exact), which is one
        # per pixel unless some pixel has two, and the gathering is skipped when it is.
        candidate = correct & (total >= 2)
        count = int(candidate.sum())
        if not count:
            return correct
        n = total.numel()
        if count * 10 > n:
            ones = exp.floor_() if overwrite else exp.floor()  # 1 where exp == 1, else 0
            exact = ones.numel() <= 1 << 24 or ones.dtype == torch.float64
            if int(ones.sum() if exact else ones.sum(dtype=torch.float64)) == n:
                return correct
            exp = ones
        where = candidate.nonzero()[:, 0]
        where = where[(exp.index_select(1, where) == 1).sum(0) >= 2]
        if where.numel():
            block = z.index_select(1, where)
            classes = torch.arange(z.shape[0], device=z.device)[:, None]
            earlier = (block == z_max[where]) & (classes < y[where])
            correct[where] = ~earlier.any(0)
        return correct


def _index_dtype(size: int) -> torch.dtype:
    """The narrowest integer type ``bincount`` takes for indices below ``size``: int16 is
    faster than int32, and int32 than int64."""
    return torch.int16 if size <= torch.iinfo(torch.int16).max + 1 else torch.int32


# Index tensors shared by all _ImageSums (and threads) of the process: built for the largest
# chunk seen, sliced for smaller ones. Chunks are at most _CHUNK_ELEMENTS values (or the user's
# chunk_size), so this holds about one chunk's int16 table per device: 2 MB on the CPU, 32 MB
# on an accelerator at 19 classes.
_INDEX_CACHE: dict = {}


def _pixel_index(n: int, device: torch.device) -> Tensor:
    """``arange(n)`` (int64), sliced from a cached one."""
    key = ('pixels', device)
    cached = _INDEX_CACHE.get(key)
    if cached is None or cached.numel() < n:
        cached = _INDEX_CACHE[key] = torch.arange(n, device=device)
    return cached[:n]


def _lane_offsets(num_classes: int, width: int, n: int, dtype: torch.dtype,
                  device: torch.device) -> Tensor:
    """``[C, n]``: ``k width + (i mod L) C width``, the entry of class k, bin 0, in lane i mod L."""
    key = ('lanes', num_classes, width, dtype, device)
    cached = _INDEX_CACHE.get(key)
    if cached is None or cached.shape[1] < n:
        rows = torch.arange(num_classes, device=device)[:, None] * width
        lanes = torch.arange(n, device=device) % _LANES * (num_classes * width)
        cached = _INDEX_CACHE[key] = (rows + lanes).to(dtype)
    return cached[:, :n]


def _fold_zero_bin(table: Tensor, width: int) -> Tensor:
    """``[C * (B+1)]`` table with ``ceil(B p)`` columns -> ``[C * B]``, p = 0 in bin 1."""
    table = table.view(-1, width)
    folded = table[:, 1:].clone()
    folded[:, 0] += table[:, 0]
    return folded.reshape(-1)


def adaptive_ece(fine_count: np.ndarray, fine_conf: np.ndarray, fine_correct: np.ndarray,
                 num_bins: int, fine_edges: Optional[tuple] = None) -> tuple[float, float]:
    """aECE with ``B`` equal-mass bins from the fine histogram; returns ``(aECE, bound)``.

    Exact definition: sort the ``N`` pixels by confidence and cut the sequence at ranks
    ``r_b = b·q + min(b, N mod B)`` (``q = N // B``; ``np.array_split``), giving
    ``aECE = (1/N) Σ_b |D_b|`` with ``D_b = Σ_{i in bin b} (a_i - c_i)`` (``a_i``: correct).

    Streaming scheme: a fine bin is a run of consecutive ranks. Fine bins inside one
    equal-mass bin contribute exactly; a fine bin cut by a rank ``r_b`` is split in
    proportion, i.e. the cumulative sums of ``a`` and ``c`` are interpolated linearly in rank.
    This gives ``D̂_b`` with ``Σ_b D̂_b = Σ_b D_b``.

    Error bound (returned with the value; it holds whatever the order of the pixels inside
    the fine bins, ties included). A piece of ``o`` pixels of a cut fine bin (``n`` pixels,
    ``k`` correct, confidence sum ``s``, confidences in ``[lo, hi]``) holds ``j`` correct
    ones, ``max(0, o-n+k) <= j <= min(o, k)``, so its ``Σ (a - c)`` lies in
    ``[j_min - o·hi, j_max - o·lo]`` (edges widened by 0.1% of the bin for rounding in the
    binning), against ``o(k - s)/n`` streamed. Summing over the pieces in bin ``b`` gives
    ``D_b - D̂_b = ε_b ∈ [L_b, U_b]``. With ``s_b = sign(D̂_b)``,
    ``|D̂_b + ε_b| - |D̂_b| = s_b ε_b + 2 max(0, -s_b (D̂_b + ε_b))`` and ``Σ_b ε_b = 0``:

        N |aECE_stream - aECE_exact| <= min_{σ=±1} 2 Σ_{b: s_b != σ} max(|L_b|, |U_b|)
                                         + 2 Σ_b max(0, (-L_b if s_b > 0 else U_b) - |D̂_b|)

    The bound vanishes when every bin is clearly over- (or under-) confident, as with
    confidences piled near 1; otherwise it is driven by the few cut fine bins, which are
    narrow in ``-log(1 - c)``, i.e. narrow exactly where segmentation confidences pile up.
    """
    lo, hi = fine_edges if fine_edges is not None else fine_bin_edges(len(fine_count))
    # The bin of a confidence is computed in the working dtype: allow its rounding.
    slack = 1e-3 * (hi - lo)
    lo, hi = lo - slack, hi + slack
    keep = fine_count > 0
    n, s, k = fine_count[keep].astype(np.float64), fine_conf[keep], fine_correct[keep]
    lo, hi = lo[keep], hi[keep]
    total = int(fine_count.sum())
    if total == 0:
        return math.nan, math.nan
    cum_n = np.concatenate([[0.0], np.cumsum(n)])
    cum_s = np.concatenate([[0.0], np.cumsum(s)])
    cum_k = np.concatenate([[0.0], np.cumsum(k)])
    q, rem = divmod(total, num_bins)
    b = np.arange(num_bins + 1)
    ranks = (b * q + np.minimum(b, rem)).astype(np.float64)
    gaps = np.diff(np.interp(ranks, cum_n, cum_k)) - np.diff(np.interp(ranks, cum_n, cum_s))
    aece = np.abs(gaps).sum() / total
    # [L_b, U_b]: how far the proportional split can be from the truth in each bin.
    inner = ranks[1:-1]
    fine = np.searchsorted(cum_n, inner, side='right') - 1
    cut = np.unique(fine[(cum_n[fine] < inner) & (fine < len(n))])
    low, high = np.zeros(num_bins), np.zeros(num_bins)
    for f in cut:
        for bin_ in range(num_bins):
            o = min(cum_n[f + 1], ranks[bin_ + 1]) - max(cum_n[f], ranks[bin_])
            if o <= 0:
                continue
            streamed = o * (k[f] - s[f]) / n[f]
            low[bin_] += max(0.0, o - n[f] + k[f]) - o * hi[f] - streamed
            high[bin_] += min(o, k[f]) - o * lo[f] - streamed
    sign = np.where(gaps >= 0, 1, -1)
    reach = np.maximum(np.abs(low), np.abs(high))
    mixed = 2 * min(reach[sign != 1].sum(), reach[sign != -1].sum())
    crossing = 2 * np.maximum(0.0, np.where(sign > 0, -low, high) - np.abs(gaps)).sum()
    return float(aece), float((mixed + crossing) / total)
