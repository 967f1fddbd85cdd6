"""The CamVid and Cityscapes baseline configs: they parse, and differ from CE only in the loss."""
import copy
import json
import os
import os.path as osp

import pytest
from mmengine.config import Config
from tooling import run_tool

import mmcals  # noqa: F401  (registrations, mmcals:: configs)

METHODS = ('ce', 'ls', 'mbls', 'focal', 'ecp', 'cals')
LOSS_TYPES = {'ls': 'LabelSmoothingLoss', 'mbls': 'MarginLoss', 'focal': 'SoftmaxFocalLoss',
              'ecp': 'ConfidencePenaltyLoss'}


def _load(repo_root, name):
    return Config.fromfile(osp.join(repo_root, 'configs', name)).to_dict()


def _without_losses(cfg):
    cfg = copy.deepcopy(cfg)
    for head in ('decode_head', 'auxiliary_head'):
        cfg['model'][head].pop('loss_decode')
    cfg.pop('custom_hooks', None)
    return cfg


def _losses(cfg):
    return [cfg['model'][head]['loss_decode'] for head in ('decode_head', 'auxiliary_head')]


def test_camvid_configs_differ_only_in_the_loss(repo_root):
    configs = {m: _load(repo_root, f'deeplabv3_r18_{m}_camvid.py') for m in METHODS}
    reference = _without_losses(configs['ce'])
    for method, cfg in configs.items():
        assert _without_losses(cfg) == reference, method
    # What they share: CPU-sized R18 model, CamVid with 11 classes, one seed.
    model = reference['model']
    assert model['backbone']['depth'] == 18 and model['pretrained'] is None
    assert model['decode_head']['num_classes'] == model['auxiliary_head']['num_classes'] == 11
    assert reference['randomness']['seed'] == 0
    assert reference['train_dataloader']['dataset']['type'] == 'CamVidDataset'
    assert reference['custom_imports']['imports'] == ['mmcals']
    assert [e['type'] for e in reference['val_evaluator']] == ['IoUMetric',
                                                               'PixelCalibrationMetric']
    # What differs: the losses, decode head at 1.0 and auxiliary head at 0.4.
    for method, loss_type in LOSS_TYPES.items():
        decode, aux = _losses(configs[method])
        assert decode['type'] == aux['type'] == loss_type
        assert (decode['loss_weight'], aux['loss_weight']) == (1.0, 0.4)
        assert {k: v for k, v in decode.items() if k != 'loss_weight'} == \
               {k: v for k, v in aux.items() if k != 'loss_weight'}
    decode, aux = _losses(configs['cals'])
    assert [loss['type'] for loss in decode] == ['CrossEntropyLoss', 'CALSLoss']
    assert decode[1]['num_classes'] == 11 and aux[1]['loss_weight'] == 0.4
    assert configs['cals']['custom_hooks'] == [{'type': 'CALSHook'}]
    assert 'custom_hooks' not in configs['ce']


@pytest.mark.parametrize('iters', [4000, 16000])
def test_camvid_long_configs_are_the_study_schedule_of_the_2k_configs(repo_root, iters):
    """``fast_scnn-*-4k`` and ``-16k`` configs equal the 2k configs with the length overrides
    that tools/experiments/camvid_study.sh passes for ITERS=4000 and 16000 (the study's results
    were made that way), so a user training one of them reproduces a study run."""
    import re
    with open(osp.join(repo_root, 'tools', 'experiments', 'camvid_study.sh')) as f:
        common = re.search(r'^COMMON=\((.*?)^\)', f.read(), re.M | re.S)[1]  # every run's
    keys = re.findall(r'"([\w.]+)=\$ITERS"', common)
    assert {'train_cfg.max_iters', 'param_scheduler.0.end'} <= set(keys), keys
    for method in METHODS:
        long = Config.fromfile(osp.join(repo_root, 'configs',
                                        f'fast_scnn-{method}_1xb8-{iters // 1000}k_camvid-'
                                        '128x128.py'))
        short = Config.fromfile(osp.join(repo_root, 'configs',
                                         f'fast_scnn-{method}_1xb8-2k_camvid-128x128.py'))
        assert short.train_cfg.max_iters == 2000 and long.train_cfg.max_iters == iters
        assert long.param_scheduler[0].end == iters, method
        short.merge_from_dict({key: iters for key in keys}, allow_list_keys=True)
        long, short = long.to_dict(), short.to_dict()
        long.pop('max_iters'), short.pop('max_iters')  # the base's helper variable
        # The study keeps a checkpoint every CKPT_INTERVAL iterations (the last one) so that a
        # stopped run resumes (bit-identically): when checkpoints are written does not change
        # a run.
        for cfg in (long, short):
            cfg['default_hooks']['checkpoint'].pop('interval')
            cfg['default_hooks']['checkpoint'].pop('max_keep_ckpts', None)
        assert long == short, method


def test_camvid_root_from_environment(repo_root, monkeypatch, tmp_path):
    monkeypatch.setenv('CAMVID_ROOT', str(tmp_path))
    cfg = _load(repo_root, 'deeplabv3_r18_ce_camvid.py')
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader]['dataset']['data_root'] == str(tmp_path)


def test_cityscapes_baselines_differ_only_in_the_loss(repo_root):
    ce = _load(repo_root, 'deeplabv3_ce_cityscapes.py')
    for method, loss_type in LOSS_TYPES.items():
        cfg = _load(repo_root, f'deeplabv3_{method}_cityscapes.py')
        assert _without_losses(cfg) == _without_losses(ce), method
        decode, aux = _losses(cfg)
        assert decode['type'] == aux['type'] == loss_type
        assert (decode['loss_weight'], aux['loss_weight']) == (1.0, 0.4)
        assert 'use_sigmoid' not in decode  # the CE arguments were dropped, not merged


def test_camvid_baseline_models_compute_their_losses(repo_root):
    """Each CamVid baseline model builds and returns finite, differentiable losses under the
    baseline's loss name for both heads, with ignored (255) pixels in the labels."""
    import torch
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    init_default_scope('mmseg')
    torch.manual_seed(0)
    inputs = torch.randn(2, 3, 64, 64)
    samples = []
    for _ in range(2):
        label = torch.randint(0, 11, (1, 64, 64))
        label[:, :4] = 255
        sample = SegDataSample(gt_sem_seg=PixelData(data=label))
        sample.set_metainfo({'img_shape': (64, 64), 'pad_shape': (64, 64)})
        samples.append(sample)
    names = {'ls': 'loss_ls', 'mbls': 'loss_mbls', 'focal': 'loss_focal', 'ecp': 'loss_ecp'}
    for method, name in names.items():
        cfg = _load(repo_root, f'deeplabv3_r18_{method}_camvid.py')
        model = MODELS.build(cfg['model'])
        losses = model.loss(inputs, samples)
        for head in ('decode', 'aux'):
            value = losses[f'{head}.{name}']
            assert torch.isfinite(value) and value.requires_grad, (method, head)


def _run_train(repo_root, config, work_dir, camvid_root, extra=()):
    options = [
        'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
        'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
        'train_dataloader.dataset.indices=2', 'val_dataloader.dataset.indices=1',
        'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False', 'val_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False', *extra,
    ]
    return run_tool('train.py', osp.join('configs', config), '--work-dir', work_dir,
                    '--cfg-options', *options, cwd=repo_root, timeout=600,
                    env={'CAMVID_ROOT': camvid_root})


def _latest(work_dir, name):
    found = [osp.join(d, f) for d, _, files in os.walk(work_dir) for f in files if f == name]
    assert found, f'no {name} under {work_dir}'
    return max(found, key=osp.getmtime)


def test_two_iterations_of_camvid_ce_through_train_tool(repo_root, camvid_root, tmp_path):
    result = _run_train(repo_root, 'deeplabv3_r18_ce_camvid.py', tmp_path, camvid_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert osp.isfile(tmp_path / 'iter_2.pth')
    with open(_latest(tmp_path, 'scalars.json')) as f:
        assert any('mIoU' in json.loads(line) for line in f)
    with open(_latest(tmp_path, 'calibration.json')) as f:
        calibration = json.load(f)
    assert calibration['classes'][0] == 'Sky' and len(calibration['classes']) == 11
    assert calibration['num_pixels'] > 0


def test_cals_camvid_config_trains_when_cals_exists(repo_root, camvid_root, tmp_path):
    from mmseg.registry import HOOKS, MODELS
    if MODELS.get('CALSLoss') is None or HOOKS.get('CALSHook') is None:
        pytest.fail('CALSLoss/CALSHook are not registered: mmcals.losses.cals and '
                    'mmcals.hooks must provide them for configs/deeplabv3_r18_cals_camvid.py')
    result = _run_train(repo_root, 'deeplabv3_r18_cals_camvid.py', tmp_path, camvid_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert osp.isfile(tmp_path / 'iter_2.pth')


def test_camvid_root_defaults_to_mmseg_convention(repo_root, monkeypatch):
    monkeypatch.delenv('CAMVID_ROOT', raising=False)
    cfg = _load(repo_root, 'deeplabv3_r18_ce_camvid.py')
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader]['dataset']['data_root'] == 'data/camvid'
