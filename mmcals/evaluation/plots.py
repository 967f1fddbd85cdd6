"""Reliability diagram and confidence histogram from a ``calibration.json`` dict.

Drawn with matplotlib's object-oriented API on an Agg canvas, so importing or calling these
never changes the caller's pyplot backend. ``draw_*`` functions draw onto a given Axes (for
tools that overlay several runs); ``save_*`` functions write a PNG, ``render_*`` return
the picture as an array.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _nonempty_bins(summary: dict) -> list:
    rel = summary['reliability']
    return [(lo, hi, n, conf, acc) for lo, hi, n, conf, acc in
            zip(rel['bin_lower'], rel['bin_upper'], rel['count'], rel['confidence'],
                rel['accuracy']) if n]


def draw_reliability_curve(ax: Axes, summary: dict, label: Optional[str] = None,
                           **plot_kwargs) -> None:
    """Accuracy against mean confidence of the non-empty bins, as a line with markers."""
    bins = _nonempty_bins(summary)
    ax.plot([b[3] for b in bins], [b[4] for b in bins], marker='o', label=label, **plot_kwargs)


def draw_reliability_diagram(ax: Axes, summary: dict, title: Optional[str] = None) -> None:
    """Bars of per-bin accuracy, the gap to the bin's mean confidence shaded, the diagonal."""
    bins = _nonempty_bins(summary)
    lowers = [b[0] for b in bins]
    widths = [b[1] - b[0] for b in bins]
    accs = [b[4] for b in bins]
    confs = [b[3] for b in bins]
    ax.bar(lowers, accs, width=widths, align='edge', color='tab:blue', edgecolor='black',
           linewidth=0.5, label='accuracy')
    ax.bar(lowers, [c - a for c, a in zip(confs, accs)], bottom=accs, width=widths,
           align='edge', color='tab:red', alpha=0.3, edgecolor='tab:red', hatch='//',
           linewidth=0.5, label='gap to confidence')
    ax.plot([0, 1], [0, 1], linestyle='--', color='gray', label='perfect calibration')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel('confidence')
    ax.set_ylabel('accuracy')
    ax.legend(loc='upper left')
    if title is None:
        ece = summary['metrics'].get('ECE')
        title = 'Reliability diagram' + ('' if ece is None else f' (ECE {ece:.2f}%)')
    ax.set_title(title)


def draw_confidence_histogram(ax: Axes, summary: dict, title: Optional[str] = None) -> None:
    """Fraction of pixels per confidence bin, with the mean confidence and the accuracy."""
    rel = summary['reliability']
    total = max(sum(rel['count']), 1)
    ax.bar(rel['bin_lower'], [n / total for n in rel['count']],
           width=[hi - lo for lo, hi in zip(rel['bin_lower'], rel['bin_upper'])], align='edge',
           color='tab:blue', edgecolor='black', linewidth=0.5)
    metrics = summary['metrics']
    for key, style, name in (('mean_confidence', '--', 'mean confidence'),
                             ('pixel_accuracy', ':', 'accuracy')):
        if metrics.get(key) is not None:
            ax.axvline(metrics[key] / 100, color='black', linestyle=style,
                       label=f'{name} {metrics[key]:.2f}%')
    ax.set_xlim(0, 1)
    ax.set_xlabel('confidence')
    ax.set_ylabel('fraction of pixels')
    ax.set_title(title or f'Confidence histogram ({summary["num_pixels"]} pixels)')
    if metrics.get('mean_confidence') is not None:
        ax.legend(loc='upper left')


def _figure(draw, summary: dict, title: Optional[str]) -> Figure:
    figure = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(figure)
    draw(figure.add_subplot(1, 1, 1), summary, title)
    figure.tight_layout()
    return figure


def _save(draw, summary: dict, path: str, title: Optional[str]) -> str:
    _figure(draw, summary, title).savefig(path, format='png')
    return path


def render_reliability_diagram(summary: dict, title: Optional[str] = None) -> np.ndarray:
    """The reliability diagram of ``summary`` as an RGB ``uint8`` array (H, W, 3), the image
    format of mmengine's visualizer backends."""
    canvas = _figure(draw_reliability_diagram, summary, title).canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_reliability_diagram(summary: dict, path: str, title: Optional[str] = None) -> str:
    """Write the reliability diagram of ``summary`` as a PNG; returns ``path``."""
    return _save(draw_reliability_diagram, summary, path, title)


def save_confidence_histogram(summary: dict, path: str, title: Optional[str] = None) -> str:
    """Write the confidence histogram of ``summary`` as a PNG; returns ``path``."""
    return _save(draw_confidence_histogram, summary, path, title)
