"""Brute-force float64 numpy reference of the pixel calibration metrics (docs/method.md §4), and
the segmentation-like test images the calibration tests share.

Written independently of mmcals.evaluation: explicit loops over bins and classes, the exact
sort-based aECE. Values are fractions (not percent).
"""
import numpy as np
import torch


def softmax64(logits):
    z = np.asarray(logits, np.float64)
    z = z - z.max(0, keepdims=True)
    e = np.exp(z)
    return e / e.sum(0, keepdims=True)


def in_bin(values, b, num_bins):
    """Bin b (1-based) holds values in ((b-1)/B, b/B]; 0 belongs to bin 1."""
    lower, upper = (b - 1) / num_bins, b / num_bins
    inside = (values > lower) & (values <= upper)
    if b == 1:
        inside |= values == 0
    return inside


def _binned_gap(conf, hit, num_bins, total):
    gap, gaps = 0.0, []
    for b in range(1, num_bins + 1):
        sel = in_bin(conf, b, num_bins)
        if sel.any():
            diff = abs(hit[sel].mean() - conf[sel].mean())
            gap += sel.sum() / total * diff
            gaps.append(diff)
    return gap, gaps


def reference_metrics(logits_list, labels_list, num_bins=15, ignore_index=255, classes=None):
    """All metrics over the valid pixels of all images; logits (C, ...), labels (...)."""
    num_classes = np.asarray(logits_list[0]).shape[0]
    probs, labels, preds, log_probs = [], [], [], []
    for logits, label in zip(logits_list, labels_list):
        z = np.asarray(logits, np.float64).reshape(num_classes, -1)
        y = np.asarray(label).reshape(-1)
        valid = y != ignore_index
        probs.append(softmax64(z[:, valid]))
        shifted = z[:, valid] - z[:, valid].max(0, keepdims=True)
        log_probs.append(shifted - np.log(np.exp(shifted).sum(0, keepdims=True)))
        preds.append(z[:, valid].argmax(0))
        labels.append(y[valid].astype(np.int64))
    p = np.concatenate(probs, 1)
    y = np.concatenate(labels)
    pred = np.concatenate(preds)
    log_p = np.concatenate(log_probs, 1)
    total = y.size
    conf = p.max(0)
    correct = (pred == y).astype(np.float64)
    ece, gaps = _binned_gap(conf, correct, num_bins, total)
    order = np.argsort(conf, kind='stable')
    aece = 0.0
    for chunk in np.array_split(order, num_bins):
        if chunk.size:
            aece += chunk.size / total * abs(correct[chunk].mean() - conf[chunk].mean())
    cece_k = []
    for k in range(num_classes):
        cece_k.append(_binned_gap(p[k], (y == k).astype(np.float64), num_bins, total)[0])
    present = [k for k in range(num_classes) if (y == k).any()]
    wanted = present if classes is None else [k for k in classes if k in present]
    ece_k = []
    for k in range(num_classes):
        sel = y == k
        ece_k.append(_binned_gap(conf[sel], correct[sel], num_bins, sel.sum())[0]
                     if sel.any() else None)
    onehot = np.zeros_like(p)
    onehot[y, np.arange(total)] = 1
    return {
        'ECE': ece,
        'MCE': max(gaps),
        'aECE': aece,
        'CECE': float(np.mean([cece_k[k] for k in wanted])),
        'NLL': float(-log_p[y, np.arange(total)].mean()),
        'Brier': float(((p - onehot) ** 2).sum(0).mean()),
        'mean_confidence': float(conf.mean()),
        'pixel_accuracy': float(correct.mean()),
        'CECE_k': cece_k,
        'ECE_k': ece_k,
        'pixels_k': [int((y == k).sum()) for k in range(num_classes)],
        'num_pixels': total,
    }


def make_images(seed, num_images=3, num_classes=6, shape=(17, 23), ignore_fraction=0.1,
                max_margin=6.0, dtype=torch.float64):
    """Segmentation-like logits: noise plus a margin on a class that is usually the label.

    Temperatures differ per image, so some bins are over- and others under-confident.
    """
    g = torch.Generator().manual_seed(seed)
    images = []
    for i in range(num_images):
        labels = torch.randint(0, num_classes, shape, generator=g)
        logits = torch.randn((num_classes, *shape), generator=g, dtype=torch.float64)
        wrong = torch.rand(shape, generator=g) < 0.3
        favoured = torch.where(wrong, torch.randint(0, num_classes, shape, generator=g), labels)
        margin = torch.rand(shape, generator=g, dtype=torch.float64) * max_margin
        logits.scatter_add_(0, favoured[None], margin[None])
        logits *= (0.5, 1.0, 2.5)[i % 3]
        labels[torch.rand(shape, generator=g) < ignore_fraction] = 255
        images.append((logits.to(dtype), labels))
    return images
