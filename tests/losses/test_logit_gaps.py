"""The logit-gap histogram and its read-outs (docs/method.md §5) against numpy on the gaps."""
import math

import numpy as np
import pytest
import torch

from mmcals.losses.logit_gaps import (
    GAP_BIN_WIDTH,
    GAP_NUM_BINS,
    GAP_RANGE,
    gap_bin_edges,
    gap_histogram,
    gap_quantiles,
    margin_for_share,
    share_above,
)


def make_logits(seed=0, num=2, num_classes=4, height=9, width=11, scale=4.0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num, num_classes, height, width, generator=generator) * scale
    valid = torch.rand(num, height, width, generator=generator) > 0.2
    return logits, valid


def direct_gaps(logits, valid):
    """Per class, the numpy array of gaps d_k = z_a - z_k over valid finite pixels, k != a."""
    z = logits.movedim(1, -1).reshape(-1, logits.shape[1]).double().numpy()
    keep = valid.reshape(-1).numpy() & np.isfinite(z).all(1)
    z = z[keep]
    winner = z.argmax(1)  # the first maximum, like torch.max
    gaps = z.max(1, keepdims=True) - z
    return [gaps[winner != k, k] for k in range(z.shape[1])]


def test_histogram_counts_each_pair_in_its_bin():
    logits, valid = make_logits()
    logits[1, 2, 3, 4] = float('nan')  # a pixel with a non-finite logit is never counted
    logits[0, 0, 0, 0] = 500.0  # gaps beyond GAP_RANGE go to the last bin
    hist = gap_histogram(logits, valid)
    assert hist.shape == (4, GAP_NUM_BINS) and hist.dtype == torch.float64
    for k, gaps in enumerate(direct_gaps(logits, valid)):
        bins = np.minimum(np.floor(gaps / GAP_BIN_WIDTH), GAP_NUM_BINS - 1).astype(int)
        expected = np.bincount(bins, minlength=GAP_NUM_BINS)
        assert hist[k].numpy().tolist() == expected.tolist()
    assert hist[1:, -1].sum() >= 1  # the 500 logit put the other classes' gaps there


def test_histogram_counts_every_valid_pixel_by_default_and_checks_the_mask():
    logits, _ = make_logits(num=1)
    hist = gap_histogram(logits)
    assert hist.sum() == 9 * 11 * 3  # every pixel, C - 1 pairs each
    with pytest.raises(ValueError, match='one per pixel'):
        gap_histogram(logits, torch.ones(3, dtype=torch.bool))


def test_quantiles_are_within_one_bin_of_the_exact_ones():
    logits, valid = make_logits(seed=1, height=30, width=40)
    hist = gap_histogram(logits, valid)
    quantiles = [0.0, 0.1, 0.5, 0.9, 0.99, 1.0]
    ours = gap_quantiles(hist, quantiles)
    gaps = direct_gaps(logits, valid)
    for k in range(4):
        exact = np.quantile(gaps[k], quantiles, method='inverted_cdf')
        assert np.all(np.abs(ours[k].numpy() - exact) <= GAP_BIN_WIDTH), k
    pooled = gap_quantiles(hist.sum(0), quantiles)
    exact = np.quantile(np.concatenate(gaps), quantiles, method='inverted_cdf')
    assert np.all(np.abs(pooled.numpy() - exact) <= GAP_BIN_WIDTH)


def test_quantiles_saturate_in_the_open_last_bin_and_are_nan_without_pairs():
    hist = torch.zeros(2, GAP_NUM_BINS, dtype=torch.float64)
    hist[0, -1] = 5  # every gap beyond GAP_RANGE
    values = gap_quantiles(hist, [0.5, 0.99])
    assert values[0].tolist() == [GAP_RANGE - GAP_BIN_WIDTH] * 2
    assert all(math.isnan(v) for v in values[1].tolist())
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        gap_quantiles(hist, [1.5])


@pytest.mark.parametrize('threshold', [0.0, 0.3, 1.0, 2.6, 7.9, 200.0])
def test_share_above_is_within_the_share_of_one_bin(threshold):
    logits, valid = make_logits(seed=2, height=30, width=40)
    hist = gap_histogram(logits, valid)
    gaps = direct_gaps(logits, valid)
    ours = share_above(hist, threshold)
    edges = gap_bin_edges().numpy()
    for k in range(4):
        exact = float(np.mean(gaps[k] > threshold))
        index = min(int(np.searchsorted(edges, threshold, side='right')) - 1, GAP_NUM_BINS - 1)
        one_bin = float(hist[k, index]) / float(hist[k].sum())
        assert abs(float(ours[k]) - exact) <= one_bin + 1e-12, k


@pytest.mark.parametrize('share', [0.01, 0.1, 0.5])
def test_margin_for_share_is_violated_by_that_share_to_within_one_bin(share):
    logits, valid = make_logits(seed=3, height=40, width=50)
    hist = gap_histogram(logits, valid).sum(0)
    gaps = np.concatenate(direct_gaps(logits, valid))
    margin = float(margin_for_share(hist, share))
    violated = float(np.mean(gaps > margin))
    # The pairs of the bin that holds the margin are the only ones it cannot place exactly.
    index = min(int(margin / GAP_BIN_WIDTH), GAP_NUM_BINS - 1)
    assert abs(violated - share) <= float(hist[index]) / float(hist.sum()) + 1e-12
    with pytest.raises(ValueError, match='share'):
        margin_for_share(hist, 1.5)
