"""ConfidenceMapHook and tools/test.py --show-dir/--out against a direct computation."""
import copy
import glob
import os.path as osp
import types

import cv2
import numpy as np
import pytest
import torch
from inprocess_tool import run_tool_here
from mmengine.registry import VISBACKENDS
from mmengine.structures import PixelData
from mmengine.visualization import BaseVisBackend, Visualizer
from mmseg.structures import SegDataSample
from tooling import REPO, cityscapes_options, run_tool

from mmcals.hooks import ConfidenceMapHook
from mmcals.hooks import confidence_map_hook as module

TINY = osp.join(REPO, 'tests', 'configs', 'deeplabv3_r18_tiny_cityscapes.py')
EPS32 = 2.0 ** -23  # float32 machine epsilon
# Scale of the random classifier's weights: confidences then spread over (1/C, 1).
CLASSIFIER_SCALE = 60.0


def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _tiny_model():
    """The tiny config's model as the tools build it on a CPU (SyncBN -> BN), in eval mode."""
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    from mmcals import compat
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(TINY)
    model_cfg = copy.deepcopy(cfg.model)
    compat._replace_sync_bn(model_cfg)
    return cfg, MODELS.build(model_cfg).eval()


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A plain state dict of the tiny model, random weights with a sharpened classifier."""
    torch.manual_seed(0)
    _, model = _tiny_model()
    state = model.state_dict()
    state['decode_head.conv_seg.weight'] *= CLASSIFIER_SCALE
    path = tmp_path_factory.mktemp('confidence_model') / 'random.pth'
    torch.save({'state_dict': state, 'meta': {}}, path)
    return path


def _float32_tolerance(logits):
    """Per pixel, a bound on the relative error of a float32 ``1 / Σ_k exp(z_k - z_max)``:
    the rounding of ``z_k - z_max`` (``|x| ε/2`` in the exponent), ``exp`` (about 1 ulp
    each), the sum of C terms (``C ε/2``) and the reciprocal (``ε/2``); doubled for margin."""
    z = logits.double()
    spread = (z.amax(0) - z.amin(0)).numpy()
    return 2 * (spread / 2 + 2 + z.shape[0] / 2 + 0.5) * EPS32


@pytest.fixture(scope='module')
def reference(checkpoint, tiny_cityscapes):
    """The model's seg_logits of each test image, computed here (one thread, as the tool's
    subprocess), and from them the confidence (float64 softmax), prediction and labels."""
    from mmengine.dataset import pseudo_collate
    from mmseg.registry import DATASETS

    cfg, model = _tiny_model()
    model.load_state_dict(torch.load(checkpoint, weights_only=True)['state_dict'])
    dataset = DATASETS.build(dict(cfg.test_dataloader.dataset, data_root=tiny_cityscapes))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    images = {}
    try:
        for i in range(len(dataset)):
            with torch.no_grad():
                sample = model.test_step(pseudo_collate([dataset[i]]))[0]
            logits = sample.seg_logits.data
            stem = osp.splitext(osp.basename(sample.img_path))[0]
            images[stem] = dict(
                conf=torch.softmax(logits.double(), 0).amax(0).numpy(),
                pred=logits.argmax(0).numpy(), gt=sample.gt_sem_seg.data[0].numpy(),
                tolerance=_float32_tolerance(logits))
    finally:
        torch.set_num_threads(threads)
    # A threshold inside the confidences of the wrong pixels: the mask has both values.
    wrong = np.concatenate([im['conf'][(im['pred'] != im['gt']) & (im['gt'] != 255)]
                            for im in images.values()])
    assert wrong.size and wrong.max() - wrong.min() > 0.1
    return images, float(np.round(np.median(wrong), 3))


@pytest.fixture(scope='module')
def tested(checkpoint, reference, tiny_cityscapes, tmp_path_factory):
    """tools/test.py --show-dir --out --confidence-threshold on the tiny set."""
    _, threshold = reference
    root = tmp_path_factory.mktemp('confidence_test')
    result = _ok(run_tool('test.py', TINY, checkpoint, '--work-dir', root / 'work',
                          '--show-dir', root / 'show', '--out', root / 'maps',
                          '--confidence-threshold', threshold, '--cfg-options',
                          *cityscapes_options(tiny_cityscapes), env={'OMP_NUM_THREADS': '1'}))
    return root, result


def test_show_dir_writes_a_figure_per_image_next_to_mmsegs(tested, reference):
    root, _ = tested
    images, _ = reference
    pictures = root / 'show' / 'vis_data' / 'vis_image'
    # What LocalVisBackend wrote from the visualizer's add_image: ours and mmseg's overlays.
    ours = sorted(osp.basename(p) for p in glob.glob(str(pictures / 'test_confidence_*.png')))
    assert ours == sorted(f'test_confidence_{stem}_0.png' for stem in images)
    mmseg = glob.glob(str(pictures / 'test_*.png_0.png'))
    assert len(mmseg) == len(images)
    for name in ours:
        figure = cv2.imread(str(pictures / name), cv2.IMREAD_UNCHANGED)
        assert figure.ndim == 3 and figure.shape[2] == 3
        # Four panels of at least the minimum panel width each, two per row.
        assert figure.shape[1] >= 2 * module.PANEL_WIDTH[0] and figure.shape[0] > 300


def test_out_maps_equal_a_direct_computation(tested, reference):
    root, _ = tested
    images, threshold = reference
    maps = root / 'maps'
    assert sorted(p.name for p in maps.iterdir()) == sorted(
        f'{stem}_{kind}' for stem in images for kind in (
            'confidence.npy', 'confidence.png', 'pred.png', 'confidently_wrong.png'))
    checked_mask = 0
    for stem, im in images.items():
        conf = np.load(maps / f'{stem}_confidence.npy')
        assert conf.dtype == np.float32 and conf.shape == im['gt'].shape
        error = np.abs(conf.astype(np.float64) - im['conf'])
        assert (error <= im['tolerance'] * im['conf']).all(), float(error.max())
        png = cv2.imread(str(maps / f'{stem}_confidence.png'), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16
        np.testing.assert_array_equal(png, np.rint(conf.astype(np.float64) * 65535))
        pred = cv2.imread(str(maps / f'{stem}_pred.png'), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(pred, im['pred'])
        mask = cv2.imread(str(maps / f'{stem}_confidently_wrong.png'), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask)) <= {0, 255}
        expected = (im['pred'] != im['gt']) & (im['conf'] >= threshold) & (im['gt'] != 255)
        # Only a confidence within rounding of the threshold may fall on the other side.
        sure = np.abs(im['conf'] - threshold) > im['tolerance'] * im['conf']
        np.testing.assert_array_equal((mask == 255)[sure], expected[sure])
        checked_mask += int(expected[sure].sum())
    assert checked_mask > 0 and (im['gt'] == 255).any()


def test_out_alone_writes_maps_without_figures(checkpoint, tiny_cityscapes, tmp_path):
    _ok(run_tool('test.py', TINY, checkpoint, '--work-dir', tmp_path / 'work', '--out',
                 tmp_path / 'maps', '--cfg-options', *cityscapes_options(tiny_cityscapes),
                 'test_dataloader.dataset.indices=1', env={'OMP_NUM_THREADS': '1'}))
    assert len(list((tmp_path / 'maps').glob('*_confidence.npy'))) == 1
    assert not glob.glob(str(tmp_path / '**' / 'test_confidence_*.png'), recursive=True)


@pytest.mark.parametrize('extra, needle', [
    (['--confidence-threshold', '0.8'], 'add one of them'),
    (['--out', 'OUT', '--confidence-threshold', '1.5'], 'give a number in [0, 1]'),
    (['--out', 'FILE'], 'is a file, not a folder'),
    (['--out', 'OUT', '--tta'], 'drop --tta or --out'),
])
def test_bad_options_are_one_line_exit_2(checkpoint, tmp_path, extra, needle):
    (tmp_path / 'FILE').write_text('')
    extra = [str(tmp_path / e) if e in ('OUT', 'FILE') else e for e in extra]
    result = run_tool_here('test.py', TINY, checkpoint, '--work-dir', tmp_path / 'work',
                           *extra)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and needle in lines[0], lines
    assert not (tmp_path / 'work').exists() and not (tmp_path / 'OUT').exists()


# The hook on its own, with a visualizer backend that records what it is given -------------
@VISBACKENDS.register_module(force=True)
class RecordingVisBackend(BaseVisBackend):
    """Keeps every image it receives."""

    def __init__(self, save_dir=None):
        super().__init__(save_dir)
        self.images = []

    @property
    def experiment(self):
        return self

    def _init_env(self):
        pass

    def add_image(self, name, image, step=0, **kwargs):
        self.images.append((name, image, step))


def _sample(tmp_path, logits, labels):
    image = np.random.default_rng(0).integers(0, 256, (*labels.shape, 3), dtype=np.uint8)
    path = str(tmp_path / 'frame_0001.png')
    cv2.imwrite(path, image)
    sample = SegDataSample(metainfo=dict(img_path=path))
    sample.seg_logits = PixelData(data=logits)
    sample.gt_sem_seg = PixelData(data=labels[None])
    return sample


def _red_pixels(figure):
    return int((figure == np.array(module.CONFIDENTLY_WRONG_COLOUR, np.uint8)).all(2).sum())


def test_hook_hands_the_figure_to_every_backend(tmp_path):
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (24, 32), generator=gen)
    labels[:3] = 255
    logits = 3 * torch.randn(4, 24, 32, generator=gen)
    sample = _sample(tmp_path, logits, labels)
    visualizer = Visualizer.get_instance(
        'confidence_map_test', save_dir=str(tmp_path / 'vis'),
        vis_backends=[dict(type='RecordingVisBackend'), dict(type='LocalVisBackend')])
    visualizer.dataset_meta = dict(classes=('a', 'b', 'c', 'd'),
                                   palette=[[255, 0, 255], [0, 255, 0], [0, 0, 255], [9, 9, 9]])
    runner = types.SimpleNamespace(visualizer=visualizer, iter=7)
    received = {}
    for threshold in (0.0, 1.0):  # every wrong pixel / none (a float32 confidence < 1 here)
        backend = visualizer.get_backend('RecordingVisBackend')
        backend.images.clear()
        hook = ConfidenceMapHook(threshold=threshold)
        hook.after_test_iter(runner, 0, None, [sample])
        [(name, figure, step)] = backend.images
        assert name == 'test_confidence_frame_0001' and step == 7
        assert figure.dtype == np.uint8 and figure.ndim == 3 and figure.shape[2] == 3
        received[threshold] = figure
    assert osp.isfile(tmp_path / 'vis' / 'vis_data' / 'vis_image' /
                      'test_confidence_frame_0001_7.png')
    conf, pred = module.confidence_and_prediction(logits)
    wrong = ((pred != labels.numpy()) & (labels.numpy() != 255)).sum()
    assert wrong > 50
    # The error panel paints the confidently wrong pixels red (the legend has a red patch in
    # both): every wrong pixel at threshold 0, none at threshold 1.
    assert _red_pixels(received[0.0]) > _red_pixels(received[1.0]) + wrong


def test_confidence_and_prediction_and_mask_functions():
    gen = torch.Generator().manual_seed(1)
    logits = 5 * torch.randn(6, 9, 11, generator=gen)
    conf, pred = module.confidence_and_prediction(logits)
    expected = torch.softmax(logits.double(), 0).amax(0).numpy()
    np.testing.assert_array_less(np.abs(conf - expected),
                                 _float32_tolerance(logits) * expected + 1e-300)
    np.testing.assert_array_equal(pred, logits.argmax(0).numpy())
    labels = torch.randint(0, 6, (9, 11), generator=gen).numpy()
    labels[0] = 255
    mask = module.confidently_wrong(pred, labels, conf, 0.5)
    for (i, j), value in np.ndenumerate(mask):
        assert value == (labels[i, j] != 255 and pred[i, j] != labels[i, j]
                         and conf[i, j] >= 0.5)
    with pytest.raises(ValueError, match='one-channel sigmoid'):
        module.confidence_and_prediction(torch.zeros(1, 4, 4))


@pytest.mark.parametrize('kwargs, needle', [
    (dict(threshold=1.2), 'threshold=1.2'),
    (dict(interval=0), 'interval=0'),
    (dict(draw=False), 'produces nothing'),
])
def test_hook_arguments_are_checked(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        ConfidenceMapHook(**kwargs)
