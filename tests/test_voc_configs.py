"""The PASCAL VOC configs: the paper's setting (1,171 / 293 split of VOC `train`) and VOC-aug.

A generated VOC-layout folder (JPEGImages/, palette PNGs in SegmentationClass/, index PNGs in
SegmentationClassAug/, ImageSets/Segmentation/{train,val,aug}.txt) holds images for the first
ids of the repository's split lists only: mmseg's dataset reads the whole list but opens just
the images it is asked for, and the runs below keep the first few (``indices``).
"""
import copy
import hashlib
import os
import os.path as osp
import re

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from parsed_configs import load, parse_anew
from PIL import Image

import mmcals  # noqa: F401  (registrations)
from mmcals.hooks import CALSHook

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SPLITS = osp.join(REPO, 'data_splits', 'voc2012')
METHODS = ('ce', 'ls', 'mbls', 'focal', 'ecp', 'cals')
LOSS_TYPES = {'ls': 'LabelSmoothingLoss', 'mbls': 'MarginLoss', 'focal': 'SoftmaxFocalLoss',
              'ecp': 'ConfidencePenaltyLoss'}
LOSS_NAMES = {'ls': 'loss_ls', 'mbls': 'loss_mbls', 'focal': 'loss_focal', 'ecp': 'loss_ecp'}
PAPER = 'deeplabv3-{}_r50-d8_1xb8-100e_voc12-512x512.py'
AUG = 'deeplabv3-{}_r50-d8_4xb4-40k_voc12aug-512x512.py'
SHA256 = {'mytrain.txt': 'ad35e5da45d693ddf1a38e90ce9ffde96c8144c2b49ec7fea8ed5d40f16605aa',
          'myval.txt': '3940eb66dacbc7fbbfe0032a7ff704ff39b58460ce0a1381dc5b5920bba6c1d3'}
TINY_MODEL = {'model.pretrained': None, 'model.backbone.depth': 18,
              'model.backbone.stem_channels': 16, 'model.backbone.base_channels': 16,
              'model.decode_head.in_channels': 128, 'model.decode_head.channels': 16}
TINY_AUX = {'model.auxiliary_head.in_channels': 64, 'model.auxiliary_head.channels': 8}
VAL_IDS = ['2099_000001', '2099_000002']  # stand-ins for VOC val (1,449 ids in the real one)
AUG_IDS = ['2099_100001', '2099_100002']  # stand-ins for SBD ids of aug.txt


def read_ids(name):
    with open(osp.join(SPLITS, name)) as f:
        return f.read().split()


def _scene(rng, height, width):
    """Background with two objects of VOC classes 1-20 and a 255 outline, as VOC has."""
    label = np.zeros((height, width), np.uint8)
    for _ in range(2):
        cls = int(rng.integers(1, 21))
        y, x = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        h, w = int(rng.integers(6, height // 2)), int(rng.integers(6, width // 2))
        label[y:y + h, x:x + w] = cls
        label[y, x:x + w] = 255
    colours = (np.arange(21)[:, None] * np.array([41, 97, 157]) % 256).astype(np.uint8)
    image = colours[label % 21].astype(np.int16) + rng.integers(-20, 21, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_voc(root, train_ids, val_ids, aug_ids, height=60, width=80, seed=0):
    """Write a VOC2012-layout folder with images for ``train_ids + val_ids + aug_ids``.

    SegmentationClass/ holds palette PNGs like VOC's; SegmentationClassAug/ holds the index
    PNGs mmseg's voc_aug.py converter writes.
    """
    from mmseg.datasets import PascalVOCDataset
    palette = np.zeros((256, 3), np.uint8)
    palette[:21] = PascalVOCDataset.METAINFO['palette']
    palette[255] = (224, 224, 192)  # VOC's outline colour
    rng = np.random.default_rng(seed)
    for folder in ('JPEGImages', 'SegmentationClass', 'SegmentationClassAug',
                   'ImageSets/Segmentation'):
        os.makedirs(osp.join(root, folder), exist_ok=True)
    for ids, folder in ((train_ids + val_ids, 'SegmentationClass'),
                        (aug_ids, 'SegmentationClassAug')):
        for image_id in ids:
            image, label = _scene(rng, height, width)
            cv2.imwrite(osp.join(root, 'JPEGImages', f'{image_id}.jpg'), image)
            png = Image.fromarray(label, mode='L')
            if folder == 'SegmentationClass':
                png = png.convert('P')
                png.putpalette(palette.flatten().tolist())
            png.save(osp.join(root, folder, f'{image_id}.png'))
    for name, ids in (('train', train_ids), ('val', val_ids), ('aug', aug_ids)):
        with open(osp.join(root, 'ImageSets', 'Segmentation', f'{name}.txt'), 'w') as f:
            f.write(''.join(f'{i}\n' for i in ids))
    return root


@pytest.fixture(scope='module')
def tiny_voc(tmp_path_factory):
    """Images for the first 4 ids of mytrain.txt and 2 of myval.txt, 2 val and 2 aug ids."""
    train_ids = read_ids('mytrain.txt')[:4] + read_ids('myval.txt')[:2]
    return make_voc(str(tmp_path_factory.mktemp('voc')), train_ids, VAL_IDS, AUG_IDS)


def test_split_lists_are_the_reference_codes():
    for name, digest in SHA256.items():
        with open(osp.join(SPLITS, name), 'rb') as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, name
    train, held_out = read_ids('mytrain.txt'), read_ids('myval.txt')
    assert (len(train), len(held_out)) == (1171, 293)
    assert len(set(train)) == 1171 and len(set(held_out)) == 293
    assert not set(train) & set(held_out)  # together the 1,464 ids of VOC 2012 train
    assert all(re.fullmatch(r'20\d\d_\d{6}', i) for i in train + held_out)
    with open(osp.join(SPLITS, 'LICENSE')) as f:
        licence = f.read()
    assert 'MIT License' in licence and 'Bingyuan Liu' in licence
    with open(osp.join(SPLITS, 'README.md')) as f:
        assert 'github.com/by-liu/CALS' in f.read()


def _without_losses(cfg):
    cfg = copy.deepcopy(cfg)
    for head in ('decode_head', 'auxiliary_head'):
        if cfg['model'].get(head):
            cfg['model'][head].pop('loss_decode')
    cfg.pop('custom_hooks', None)
    return cfg


@pytest.mark.parametrize('family', [PAPER, AUG])
def test_each_family_differs_from_ce_only_in_the_loss(family):
    configs = {m: load(family.format(m)).to_dict() for m in METHODS}
    reference = _without_losses(configs['ce'])
    has_aux = bool(reference['model']['auxiliary_head'])
    for method, cfg in configs.items():
        assert _without_losses(cfg) == reference, method
    for method, loss_type in LOSS_TYPES.items():
        decode = configs[method]['model']['decode_head']['loss_decode']
        assert decode == {**decode, 'type': loss_type, 'loss_weight': 1.0}
        assert 'use_sigmoid' not in decode  # the CE arguments were dropped, not merged
        if has_aux:
            aux = configs[method]['model']['auxiliary_head']['loss_decode']
            assert aux == {**decode, 'loss_weight': 0.4}
    cals = configs['cals']
    assert [loss['type'] for loss in cals['model']['decode_head']['loss_decode']] == [
        'CrossEntropyLoss', 'CALSLoss']
    assert cals['model']['decode_head']['loss_decode'][1]['num_classes'] == 21
    if has_aux:
        assert cals['model']['auxiliary_head']['loss_decode'][1]['loss_weight'] == 0.4
    assert cals['custom_hooks'] == [{'type': 'CALSHook'}]
    assert 'custom_hooks' not in configs['ce']


def _same_file(path, *parts):
    return osp.samefile(path, osp.join(*parts))


def test_paper_setting():
    from mmcals.evaluation import PixelCalibrationMetric
    cfg = load(PAPER.format('cals'))
    model = cfg.model
    assert model.backbone.type == 'ResNetV1c' and model.backbone.depth == 50
    assert model.pretrained == 'open-mmlab://resnet50_v1c'  # ImageNet weights
    assert model.decode_head.type == 'ASPPHead' and model.decode_head.num_classes == 21
    assert model.auxiliary_head is None
    assert cfg.train_dataloader.batch_size == 8
    assert cfg.train_cfg == dict(type='EpochBasedTrainLoop', max_epochs=100, val_interval=1)
    assert cfg.optim_wrapper.optimizer.type == 'SGD'
    assert cfg.param_scheduler[0]['end'] == 100 and cfg.param_scheduler[0]['by_epoch']
    # Train on mytrain, update λ on the held-out myval, test on VOC val.
    assert _same_file(cfg.train_dataloader.dataset.ann_file, SPLITS, 'mytrain.txt')
    assert _same_file(cfg.val_dataloader.dataset.ann_file, SPLITS, 'myval.txt')
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = cfg[loader].dataset
        assert dataset.type == 'PascalVOCDataset'
        assert dataset.data_prefix == dict(img_path='JPEGImages',
                                           seg_map_path='SegmentationClass')
    assert cfg.test_dataloader.dataset.ann_file == 'ImageSets/Segmentation/val.txt'
    metric = [m for m in cfg.val_evaluator if m['type'] == 'PixelCalibrationMetric'][0]
    assert PixelCalibrationMetric(**{k: v for k, v in metric.items() if k != 'type'}
                                  ).num_bins == 15


def test_voc_aug_setting():
    cfg = load(AUG.format('cals'))
    assert cfg.model.pretrained == 'open-mmlab://resnet50_v1c'
    assert cfg.model.auxiliary_head.loss_decode[0]['loss_weight'] == 0.4
    assert (cfg.train_dataloader.batch_size, cfg.train_cfg.max_iters) == (4, 40000)
    first, aug = cfg.train_dataloader.dataset.datasets
    assert _same_file(first.ann_file, SPLITS, 'mytrain.txt')
    assert first.data_prefix.seg_map_path == 'SegmentationClass'
    assert aug.ann_file == 'ImageSets/Segmentation/aug.txt'
    assert aug.data_prefix.seg_map_path == 'SegmentationClassAug'
    assert _same_file(cfg.val_dataloader.dataset.ann_file, SPLITS, 'myval.txt')
    assert cfg.test_dataloader.dataset.ann_file == 'ImageSets/Segmentation/val.txt'
    # Model, pipelines, optimiser and schedule are mmseg's VOC-aug config's, unchanged.
    from mmcals.config_utils import resolve_config_path
    mmseg = Config.fromfile(resolve_config_path(
        'mmseg::deeplabv3/deeplabv3_r50-d8_4xb4-40k_voc12aug-512x512.py')).to_dict()
    ce = load(AUG.format('ce')).to_dict()

    def plain(node):  # mmengine tags dicts inherited through mmseg:: with _scope_
        if isinstance(node, dict):
            return {k: plain(v) for k, v in node.items() if k != '_scope_'}
        if isinstance(node, list):
            return [plain(v) for v in node]
        return node

    for key in ('model', 'train_pipeline', 'test_pipeline', 'optim_wrapper', 'param_scheduler'):
        assert plain(ce[key]) == plain(mmseg[key]), key
    assert plain(ce['train_cfg']) == dict(plain(mmseg['train_cfg']), val_interval=1000)
    for part in ce['train_dataloader']['dataset']['datasets']:
        assert plain(part['pipeline']) == plain(mmseg['train_pipeline'])


def test_voc_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('VOC_ROOT', str(tmp_path))
    for name in (PAPER.format('ce'), AUG.format('ce')):
        cfg = parse_anew(name)  # the root is read at parse time
        datasets = [cfg.val_dataloader.dataset, cfg.test_dataloader.dataset]
        train = cfg.train_dataloader.dataset
        datasets += list(train.datasets) if train.type == 'ConcatDataset' else [train]
        assert {d.data_root for d in datasets} == {str(tmp_path)}, name


def tiny(cfg, data_root, work_dir, aux):
    """Point every loader at ``data_root``, keep a few images, tiny widths, no checkpoints.

    The images are trained and tested at their generated 60x80 size: the configs' own
    pipelines (which scale them to 512 pixels and more) are exercised by
    test_the_datasets_read_the_voc_layout_with_the_repository_lists.
    """
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                dict(type='PackSegInputs')]
    options = {**TINY_MODEL, **(TINY_AUX if aux else {}), 'work_dir': work_dir,
               'model.data_preprocessor.size': (60, 80),
               'experiment_name': osp.basename(work_dir),
               'visualizer.name': osp.basename(work_dir),
               'default_hooks.checkpoint.interval': 10**6,
               'default_hooks.checkpoint.save_last': False,
               'default_hooks.logger.interval': 1}
    for loader, keep in (('train_dataloader', 4), ('val_dataloader', 2),
                         ('test_dataloader', None)):
        options.update({f'{loader}.num_workers': 0, f'{loader}.persistent_workers': False})
        dataset = cfg[loader].dataset
        if dataset.type == 'ConcatDataset':
            for i in range(len(dataset.datasets)):
                options.update({f'{loader}.dataset.datasets.{i}.data_root': data_root,
                                f'{loader}.dataset.datasets.{i}.pipeline': pipeline,
                                f'{loader}.dataset.datasets.{i}.indices': 2})
        else:
            options[f'{loader}.dataset.data_root'] = data_root
            options[f'{loader}.dataset.pipeline'] = pipeline
            if keep:
                options[f'{loader}.dataset.indices'] = keep
    options['train_dataloader.batch_size'] = 2
    cfg.merge_from_dict(options)
    # A margin the first logits' gaps exceed, so that λ leaves its start value.
    for head in ('decode_head', 'auxiliary_head'):
        for loss in (cfg.model[head] or {}).get('loss_decode', []) if cfg.model[head] else []:
            if loss['type'] == 'CALSLoss':
                loss['margin'] = 0.05
    return cfg


def train_and_test(cfg):
    from mmcals.cli import build_runner, check_datasets
    check_datasets(cfg, ['train_dataloader', 'val_dataloader', 'test_dataloader'])
    runner = build_runner(cfg)
    found = CALSHook.find_losses(runner.model)
    before = {label: loss.lambda_.clone() for label, (loss, _) in found.items()}
    runner.train()
    after = {label: loss.lambda_.clone() for label, (loss, _) in found.items()}
    metrics = runner.test()
    return runner, before, after, metrics


def _check_sample(sample, what, cropped=False):
    label = sample['data_samples'].gt_sem_seg.data
    values = set(label.unique().tolist())
    # Palette and index PNGs both decode to one channel of class indices (0-20, 255), not
    # colours; a random crop may hold background only.
    assert label.shape[0] == 1 and values <= set(range(21)) | {255}, what
    assert cropped or len(values - {0, 255}) >= 1, what


def test_the_datasets_read_the_voc_layout_with_the_repository_lists(tiny_voc):
    """Both families' datasets, with their own pipelines, on the VOC layout."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    init_default_scope('mmseg')
    cfg = load(PAPER.format('ce'))
    sizes = {}
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = DATASETS.build(dict(cfg[loader].dataset, data_root=tiny_voc))
        sizes[loader] = len(dataset)
        _check_sample(dataset[0], loader, cropped=loader == 'train_dataloader')
    assert sizes == {'train_dataloader': 1171, 'val_dataloader': 293, 'test_dataloader': 2}
    assert dataset.metainfo['classes'][0] == 'background'
    train = load(AUG.format('ce')).train_dataloader.dataset
    for part in train.datasets:
        part.data_root = tiny_voc
    dataset = DATASETS.build(train)
    assert len(dataset) == 1171 + len(AUG_IDS)
    _check_sample(dataset[0], 'VOC train part', cropped=True)
    sample = dataset[1171]  # the first aug.txt image, from SegmentationClassAug/
    assert sample['data_samples'].seg_map_path.endswith(f'SegmentationClassAug/{AUG_IDS[0]}.png')
    _check_sample(sample, 'aug part', cropped=True)
    assert sample['inputs'].shape[1:] == (512, 512)  # mmseg's VOC-aug pipeline pads to crops


@pytest.fixture(scope='module')
def paper_run(tiny_voc, tmp_path_factory):
    cfg = tiny(load(PAPER.format('cals')), tiny_voc, str(tmp_path_factory.mktemp('paper')),
               aux=False)
    cfg.merge_from_dict({'train_cfg.max_epochs': 1, 'param_scheduler.0.end': 1})
    return train_and_test(cfg)


def test_paper_cals_config_trains_an_epoch_and_updates_from_the_held_out_images(paper_run):
    runner, before, after, metrics = paper_run
    assert runner.epoch == 1 and runner.iter == 2  # 4 images at batch 2
    assert sorted(after) == ['decode_head']
    assert not torch.equal(before['decode_head'], after['decode_head'])
    # The test loop evaluated VOC val with both metrics.
    assert 'mIoU' in metrics and any('ECE' in key for key in metrics)


def test_voc_aug_cals_config_trains_on_both_parts(tiny_voc, tmp_path):
    cfg = tiny(load(AUG.format('cals')), tiny_voc, str(tmp_path), aux=True)
    cfg.merge_from_dict({'train_cfg.max_iters': 2, 'train_cfg.val_interval': 2})
    runner, before, after, metrics = train_and_test(cfg)
    assert len(runner.train_dataloader.dataset) == 4  # 2 of mytrain + 2 of aug.txt
    assert sorted(after) == ['auxiliary_head', 'decode_head']
    for label in after:
        assert not torch.equal(before[label], after[label]), label
    assert 'mIoU' in metrics


@pytest.mark.parametrize('family', [PAPER, AUG])
def test_voc_baseline_models_compute_their_losses(family):
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    init_default_scope('mmseg')
    torch.manual_seed(0)
    samples = []
    for _ in range(2):
        label = torch.randint(0, 21, (1, 64, 64))
        label[:, :4] = 255
        sample = SegDataSample(gt_sem_seg=PixelData(data=label))
        sample.set_metainfo({'img_shape': (64, 64), 'pad_shape': (64, 64)})
        samples.append(sample)
    for method, name in LOSS_NAMES.items():
        cfg = load(family.format(method))
        aux = bool(cfg.model.auxiliary_head)
        cfg.merge_from_dict({**TINY_MODEL, **(TINY_AUX if aux else {}),
                             'model.backbone.norm_cfg.type': 'BN',
                             'model.decode_head.norm_cfg.type': 'BN'})
        if aux:
            cfg.merge_from_dict({'model.auxiliary_head.norm_cfg.type': 'BN'})
        losses = MODELS.build(cfg.model).loss(torch.randn(2, 3, 64, 64), samples)
        for head in ('decode', 'aux') if aux else ('decode',):
            value = losses[f'{head}.{name}']
            assert torch.isfinite(value) and value.requires_grad, (method, head)
        assert aux or not any(key.startswith('aux.') for key in losses)
