"""ConfidenceMapHook: per test image, how sure the segmentor is, and where it is sure and wrong.

For every test image the hook takes the data sample's ``seg_logits`` (the final head's logits
at the label size, as mmseg's segmentors return them), computes the confidence
``c = max_k softmax(z)_k`` and the prediction ``argmax_k z_k`` of every pixel (docs/method.md
§4), and

- draws a figure (image | prediction overlaid as mmseg's visualizer does | confidence heat
  map with a colour bar | the pixels predicted wrongly, those with ``c >= threshold`` marked as
  *confidently wrong*) and hands it to the runner's visualizer (``add_image``), so the local
  files (``vis_data/vis_image/``) and every configured vis backend (TensorBoard, W&B, ...) get it;
- with ``out_dir``, writes the per-pixel maps for analysis elsewhere.

``tools/test.py --show-dir DIR`` turns it on (``--out DIR`` for the maps,
``--confidence-threshold`` for the threshold).
"""
from __future__ import annotations

import os
import os.path as osp
import tempfile
from typing import Optional, Sequence

import cv2
import mmcv
import mmengine.fileio as fileio
import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmseg.registry import HOOKS

# Colours of the error panel (RGB): wrong below the threshold, confidently wrong, ignored.
WRONG_COLOUR = (255, 200, 40)
CONFIDENTLY_WRONG_COLOUR = (220, 0, 0)
IGNORED_COLOUR = (40, 40, 40)
# Panel width in pixels of the figure: small images are enlarged, large ones reduced.
PANEL_WIDTH = (320, 480)
# 16-bit confidence PNG: c * 65535, rounded.
CONFIDENCE_PNG_SCALE = 65535


def confidence_and_prediction(seg_logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, ``max_k softmax(z)_k`` (float32) and ``argmax_k z_k`` (int64).

    Args:
        seg_logits (Tensor): ``(C, H, W)`` logits, ``C >= 2``; computed in float32 (float64
            stays float64 until the result).

    The confidence is ``1 / Σ_k exp(z_k - max_j z_j)``: the winner's probability without
    normalising every class. The prediction is ``argmax`` as mmseg's ``pred_sem_seg``.
    """
    if seg_logits.ndim != 3 or seg_logits.shape[0] < 2:
        raise ValueError('ConfidenceMapHook needs softmax logits of shape (C >= 2, H, W), got '
                         f'{tuple(seg_logits.shape)} (a one-channel sigmoid head has no '
                         'softmax confidence)')
    z = seg_logits.detach()
    if z.dtype != torch.float64:
        z = z.float()
    top, _ = z.max(0)
    conf = torch.sub(z, top).exp_().sum(0).reciprocal_()
    pred = z.argmax(0)
    return conf.float().cpu().numpy(), pred.cpu().numpy()


def confidently_wrong(pred: np.ndarray, gt: np.ndarray, conf: np.ndarray, threshold: float,
                      ignore_index: int = 255) -> np.ndarray:
    """``(pred != gt) & (conf >= threshold) & (gt != ignore_index)``, as a bool map."""
    return (pred != gt) & (conf >= threshold) & (gt != ignore_index)


def _overlay(image: np.ndarray, pred: np.ndarray, palette: np.ndarray, alpha: float):
    """The prediction blended over the image, as mmseg's SegLocalVisualizer blends it."""
    colours = palette[np.clip(pred, 0, len(palette) - 1)]
    return (image * (1 - alpha) + colours * alpha).astype(np.uint8)


def _error_map(image: np.ndarray, pred: np.ndarray, gt: np.ndarray, wrong: np.ndarray,
               ignore_index: int) -> np.ndarray:
    """Grey image; wrong pixels yellow, confidently wrong ones red, ignored ones dark."""
    grey = image.mean(2, keepdims=True) * 0.6 + 60
    picture = np.repeat(grey, 3, 2).astype(np.uint8)
    picture[gt == ignore_index] = IGNORED_COLOUR
    picture[(pred != gt) & (gt != ignore_index)] = WRONG_COLOUR
    picture[wrong] = CONFIDENTLY_WRONG_COLOUR
    return picture


def _palette(dataset_meta: Optional[dict], num_classes: int) -> np.ndarray:
    palette = (dataset_meta or {}).get('palette')
    if palette is not None and len(palette) >= num_classes:
        return np.asarray(palette, np.float64)
    # No palette for these classes: fixed distinct colours.
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (num_classes, 3)).astype(np.float64)


def render_figure(image: np.ndarray, pred: np.ndarray, conf: np.ndarray,
                  gt: Optional[np.ndarray], threshold: float, palette: np.ndarray,
                  alpha: float = 0.8, ignore_index: int = 255,
                  title: Optional[str] = None) -> np.ndarray:
    """The 2x2 figure as an RGB uint8 array.

    Args:
        image (np.ndarray): ``(H, W, 3)`` RGB uint8, the size of the maps.
        pred, conf (np.ndarray): ``(H, W)`` prediction and confidence.
        gt (np.ndarray, optional): ``(H, W)`` labels; without them the error panel says so.
        threshold (float): Confidence from which a wrong pixel is confidently wrong.
        palette (np.ndarray): ``(C, 3)`` RGB colours of the classes.
        alpha (float): Weight of the class colours in the overlay. Default: 0.8.
        ignore_index (int): Label of unlabelled pixels. Default: 255.
        title (str, optional): The figure's title (e.g. the image name).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    height, width = conf.shape
    panel = float(np.clip(width, *PANEL_WIDTH)) / 100  # inches at 100 dpi
    figure = Figure(figsize=(2 * panel + 1.2, 2 * panel * height / width + 1.3), dpi=100,
                    layout='constrained')
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2)
    for ax in axes.flat:
        ax.set_axis_off()
    small = {'fontsize': 9}
    axes[0, 0].imshow(image)
    axes[0, 0].set_title('image', **small)
    axes[0, 1].imshow(_overlay(image, pred, palette, alpha))
    axes[0, 1].set_title('prediction', **small)
    shown = axes[1, 0].imshow(conf, cmap='magma', vmin=0, vmax=1, interpolation='nearest')
    axes[1, 0].set_title(f'confidence (max softmax), mean {conf.mean():.2f}', **small)
    bar = figure.colorbar(shown, ax=axes[1, 0], fraction=0.046, pad=0.02)
    bar.ax.tick_params(labelsize=7)
    bar.ax.axhline(threshold, color='cyan', linewidth=1)
    if gt is None:
        axes[1, 1].text(0.5, 0.5, 'no ground truth', ha='center', va='center',
                        transform=axes[1, 1].transAxes)
    else:
        wrong = confidently_wrong(pred, gt, conf, threshold, ignore_index)
        labelled = max(int((gt != ignore_index).sum()), 1)
        errors = int(((pred != gt) & (gt != ignore_index)).sum())
        axes[1, 1].imshow(_error_map(image, pred, gt, wrong, ignore_index),
                          interpolation='nearest')
        axes[1, 1].set_title(f'confidently wrong (c ≥ {threshold:g}): '
                             f'{wrong.sum() / labelled:.1%} of labelled pixels '
                             f'({errors / labelled:.1%} wrong)', **small)
        axes[1, 1].legend(
            handles=[Patch(color=np.divide(CONFIDENTLY_WRONG_COLOUR, 255),
                           label=f'wrong, c ≥ {threshold:g}'),
                     Patch(color=np.divide(WRONG_COLOUR, 255), label=f'wrong, c < {threshold:g}'),
                     Patch(color=np.divide(IGNORED_COLOUR, 255), label='unlabelled')],
            loc='upper center', bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=7,
            frameon=False, handlelength=1.2, columnspacing=1.0)
    if title:
        figure.suptitle(title, fontsize=10)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _replace(path: str, write) -> None:
    """``write(temporary_path)``, then rename onto ``path``: no half-written file."""
    folder, name = osp.split(path)
    handle, temporary = tempfile.mkstemp(prefix=f'.{name}.', suffix=osp.splitext(name)[1],
                                         dir=folder)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if osp.exists(temporary):
            os.unlink(temporary)
        raise


def _write_png(path: str, array: np.ndarray) -> None:
    def write(temporary):
        if not cv2.imwrite(temporary, array):
            raise OSError(f'could not write {path}')
    _replace(path, write)


def save_maps(out_dir: str, stem: str, conf: np.ndarray, pred: np.ndarray,
              wrong: Optional[np.ndarray]) -> list[str]:
    """Write ``<stem>_confidence.npy`` (float32), ``<stem>_confidence.png`` (16-bit,
    ``round(c · 65535)``), ``<stem>_pred.png`` (class indices, 8-bit, 16-bit above 255
    classes) and, with labels, ``<stem>_confidently_wrong.png`` (0 or 255). Returns the paths.
    """
    paths = {kind: osp.join(out_dir, f'{stem}_{kind}')
             for kind in ('confidence.npy', 'confidence.png', 'pred.png',
                          'confidently_wrong.png')}

    def save_npy(temporary):
        with open(temporary, 'wb') as f:
            np.save(f, conf.astype(np.float32))
    _replace(paths['confidence.npy'], save_npy)
    _write_png(paths['confidence.png'],
               np.rint(conf.astype(np.float64) * CONFIDENCE_PNG_SCALE).astype(np.uint16))
    _write_png(paths['pred.png'], pred.astype(np.uint8 if pred.max() < 256 else np.uint16))
    if wrong is None:
        paths.pop('confidently_wrong.png')
    else:
        _write_png(paths['confidently_wrong.png'], wrong.astype(np.uint8) * 255)
    return list(paths.values())


@HOOKS.register_module()
class ConfidenceMapHook(Hook):
    """Confidence and confidently-wrong maps of every test image.

    Per test image, from the data sample's ``seg_logits`` ``z`` (``(C, H, W)``, ``C >= 2``) and
    ``gt_sem_seg``: confidence ``c = max_k softmax(z)_k``, prediction ``ŷ = argmax_k z_k``
    (mmseg's ``pred_sem_seg``) and the confidently-wrong pixels
    ``(ŷ != y) & (c >= threshold) & (y != ignore_index)``.

    With ``draw``, a figure (image | prediction overlay | confidence heat map with colour bar
    | wrong pixels, the confidently wrong ones in red) goes to the runner's visualizer as
    ``add_image('test_confidence_<stem>', figure, step)``: with mmengine's
    ``LocalVisBackend`` it is written to
    ``<save_dir>/vis_data/vis_image/test_confidence_<stem>_<step>.png``, and every other
    configured vis backend receives it. As for mmseg's ``SegVisualizationHook``, only rank
    0's images reach the visualizer in distributed runs.

    With ``out_dir``, every rank writes its images' maps there (:func:`save_maps`):
    ``<stem>_confidence.npy`` (float32), ``<stem>_confidence.png`` (16-bit, ``c · 65535``),
    ``<stem>_pred.png`` and, with labels, ``<stem>_confidently_wrong.png`` (0/255). Each file
    is written whole (temporary file, then renamed). ``<stem>`` is the image file's name
    without its extension.

    One image is handled at a time: one logits-sized temporary and a few ``H x W`` maps.

    Args:
        threshold (float): Confidence from which a wrong pixel counts as confidently wrong,
            in [0, 1]. Default: 0.9.
        draw (bool): Draw the figure for the visualizer. Default: True.
        out_dir (str, optional): Folder for the per-pixel maps. Default: None (none written).
        interval (int): Every this many test iterations (1: every image). Default: 1.
        ignore_index (int): Label of unlabelled pixels. Default: 255.
        backend_args (dict, optional): mmengine file backend arguments to read the images.
            Default: None.
    """

    priority = 'LOW'  # nothing depends on it: after the other hooks

    def __init__(self,
                 threshold: float = 0.9,
                 draw: bool = True,
                 out_dir: Optional[str] = None,
                 interval: int = 1,
                 ignore_index: int = 255,
                 backend_args: Optional[dict] = None):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not 0 <= threshold <= 1:
            raise ValueError(f'ConfidenceMapHook threshold={threshold!r} must be a number in '
                             '[0, 1]')
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f'ConfidenceMapHook interval={interval!r} must be an int >= 1')
        if not draw and out_dir is None:
            raise ValueError('ConfidenceMapHook with draw=False and no out_dir produces '
                             'nothing: set one of them')
        self.threshold = float(threshold)
        self.draw = draw
        self.out_dir = out_dir
        self.interval = interval
        self.ignore_index = ignore_index
        self.backend_args = dict(backend_args) if backend_args else None

    def before_test(self, runner) -> None:
        if self.out_dir is not None:
            os.makedirs(self.out_dir, exist_ok=True)

    def after_test_iter(self, runner, batch_idx: int, data_batch=None,
                        outputs: Optional[Sequence] = None) -> None:
        if not outputs or not self.every_n_inner_iters(batch_idx, self.interval):
            return
        for sample in outputs:
            self._process(runner, sample)

    def _process(self, runner, sample) -> None:
        if 'seg_logits' not in sample:
            raise ValueError('ConfidenceMapHook needs the seg_logits of the data samples '
                             '(mmseg segmentors return them from predict)')
        conf, pred = confidence_and_prediction(sample.seg_logits.data)
        gt = None
        if 'gt_sem_seg' in sample:
            gt = sample.gt_sem_seg.data.cpu().numpy()
            gt = gt[0] if gt.ndim == 3 and gt.shape[0] == 1 else gt
            if gt.shape != conf.shape:
                raise ValueError(f'gt_sem_seg of {sample.img_path} has shape {gt.shape} but '
                                 f'its seg_logits {conf.shape}: load the labels after any '
                                 'Resize of the test pipeline')
        wrong = None if gt is None else confidently_wrong(pred, gt, conf, self.threshold,
                                                         self.ignore_index)
        stem = osp.splitext(osp.basename(sample.img_path))[0]
        if self.out_dir is not None:
            save_maps(self.out_dir, stem, conf, pred, wrong)
        if self.draw and is_main_process():  # the visualizer records rank 0's images only
            visualizer = runner.visualizer
            image = mmcv.imfrombytes(fileio.get(sample.img_path,
                                                backend_args=self.backend_args),
                                     channel_order='rgb')
            if image.shape[:2] != conf.shape:
                image = mmcv.imresize(image, (conf.shape[1], conf.shape[0]))
            figure = render_figure(
                image, pred, conf, gt, self.threshold,
                _palette(visualizer.dataset_meta, int(sample.seg_logits.data.shape[0])),
                alpha=float(getattr(visualizer, 'alpha', 0.8)),
                ignore_index=self.ignore_index, title=osp.basename(sample.img_path))
            visualizer.add_image(f'test_confidence_{stem}', figure, step=runner.iter)
