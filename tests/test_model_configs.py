"""CALS on mmseg's other models: PSPNet, FCN, UPerNet, SegFormer, and add_cals on any config.

Every configs/*-cals_*_cityscapes-*.py model trains 2 iterations (shrunk to tiny widths) on the
generated Cityscapes-layout set, validates once, and CALSHook updates the λ of every CALSLoss
it finds. The trainings run once per module (``trained``) and the tests read their results.
"""
import os.path as osp
import sys

import pytest
import torch
from mmengine.config import Config
from parsed_configs import load

import mmcals  # noqa: F401  (registrations, mmseg:: configs)
from mmcals.config_utils import add_cals, main, resolve_config_path
from mmcals.hooks import CALSHook

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
HEADS = ('decode_head', 'auxiliary_head')
# ResNet-18 with 16 stem/base channels: stage widths 16, 32, 64, 128.
TINY_RESNET = {'model.pretrained': None, 'model.backbone.depth': 18,
               'model.backbone.stem_channels': 16, 'model.backbone.base_channels': 16}
D8_HEADS = {'model.decode_head.in_channels': 128, 'model.decode_head.channels': 16,
            'model.auxiliary_head.in_channels': 64, 'model.auxiliary_head.channels': 8}
# Per config: the tiny widths, and the CALSLoss labels CALSHook must find.
MODELS = {
    'pspnet-cals_r50-d8_4xb2-80k_cityscapes-512x1024.py': ({**TINY_RESNET, **D8_HEADS}, HEADS),
    'fcn-cals_r50-d8_4xb2-80k_cityscapes-512x1024.py': ({**TINY_RESNET, **D8_HEADS}, HEADS),
    'upernet-cals_r50_4xb2-80k_cityscapes-512x1024.py': (
        {**TINY_RESNET, **D8_HEADS, 'model.decode_head.in_channels': [16, 32, 64, 128]}, HEADS),
    # MiT stage widths are embed_dims * num_heads[i].
    'segformer-cals_mit-b0_8xb1-160k_cityscapes-1024x1024.py': (
        {'model.backbone.init_cfg': None, 'model.backbone.embed_dims': 16,
         'model.backbone.num_layers': [1, 1, 1, 1], 'model.backbone.num_heads': [1, 1, 1, 1],
         'model.decode_head.in_channels': [16, 16, 16, 16], 'model.decode_head.channels': 16},
        ('decode_head',)),
}
# What add_cals is shown on: configs the user did not write.
MMSEG_PSPNET = 'mmseg::pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py'
MMSEG_FCN = 'mmseg::fcn/fcn_r50-d8_4xb2-40k_cityscapes-512x1024.py'
MMSEG_BASE = {  # the mmseg config each of ours is add_cals of
    'pspnet-cals_r50-d8_4xb2-80k_cityscapes-512x1024.py':
        'mmseg::pspnet/pspnet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
    'fcn-cals_r50-d8_4xb2-80k_cityscapes-512x1024.py':
        'mmseg::fcn/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py',
    'upernet-cals_r50_4xb2-80k_cityscapes-512x1024.py':
        'mmseg::upernet/upernet_r50_4xb2-80k_cityscapes-512x1024.py',
    'segformer-cals_mit-b0_8xb1-160k_cityscapes-1024x1024.py':
        'mmseg::segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py',
}


def cals_entries(cfg):
    """Every CALSLoss dict of the config's heads, as ``(head_key, loss_dict)``."""
    found = []
    for key in HEADS:
        head = cfg.model.get(key)
        for loss in (head or {}).get('loss_decode', []) if head else []:
            if isinstance(loss, dict) and loss.get('type') == 'CALSLoss':
                found.append((key, loss))
    return found


def shrink(cfg: Config, data_root: str, work_dir: str, widths: dict) -> Config:
    """2 iterations at tiny widths on the 64x128 generated set, validation at iteration 2.

    The margin 0.05 is one the first iterations' small logit gaps already exceed, so the
    updated λ differs from its start value (at the default margin of 10 every P' would be 0
    and λ would stay at its lower bound).
    """
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                dict(type='PackSegInputs')]
    options = {
        **widths,
        'model.data_preprocessor.size': (64, 128), 'model.test_cfg': dict(mode='whole'),
        'train_cfg': dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2),
        # No checkpoints: each would format the whole config again (seconds per save).
        'default_hooks.logger.interval': 1, 'default_hooks.checkpoint.interval': 10**6,
        'default_hooks.checkpoint.save_last': False,
        'randomness': dict(seed=0), 'work_dir': work_dir,
        'experiment_name': osp.basename(work_dir), 'visualizer.name': osp.basename(work_dir),
    }
    for loader, batch in (('train_dataloader', 2), ('val_dataloader', 1),
                          ('test_dataloader', 1)):
        options.update({f'{loader}.batch_size': batch, f'{loader}.num_workers': 0,
                        f'{loader}.persistent_workers': False,
                        f'{loader}.dataset.data_root': data_root,
                        f'{loader}.dataset.pipeline': pipeline})
    cfg.merge_from_dict(options)
    for _, loss in cals_entries(cfg):
        loss['margin'] = 0.05
    return cfg


def train(cfg: Config) -> dict:
    """Train; return the labels CALSHook finds and each loss's λ before and after."""
    from mmcals.cli import build_runner
    runner = build_runner(cfg)
    found = CALSHook.find_losses(runner.model)
    before = {label: loss.lambda_.clone() for label, (loss, _) in found.items()}
    runner.train()
    return {label: (before[label], loss.lambda_.clone())
            for label, (loss, _) in CALSHook.find_losses(runner.model).items()}


def pspnet_with_add_cals() -> Config:
    return add_cals(load(MMSEG_PSPNET))


def fcn_with_two_losses() -> Config:
    """mmseg's FCN whose decode head has two losses (CE and Dice) before CALS is added."""
    cfg = load(MMSEG_FCN)
    cfg.model.decode_head.loss_decode = [
        dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        dict(type='DiceLoss', use_sigmoid=False, loss_weight=0.5)]
    return add_cals(cfg)


# PSPNet trains as add_cals of mmseg's 40k config: shrunk, it is our 80k config but for the
# length of the learning-rate schedule (test_our_model_configs_are_add_cals_of_mmsegs shows
# the rest is the same), so one PSPNet training covers both.
PSPNET = 'pspnet-cals_r50-d8_4xb2-80k_cityscapes-512x1024.py'
RUNS = {
    **{name: (lambda name=name: load(name), widths, labels)
       for name, (widths, labels) in MODELS.items() if name != PSPNET},
    'add_cals(pspnet 40k)': (pspnet_with_add_cals, MODELS[PSPNET][0], HEADS),
    'add_cals(fcn CE+Dice)': (fcn_with_two_losses, MODELS[
        'fcn-cals_r50-d8_4xb2-80k_cityscapes-512x1024.py'][0], HEADS),
}


@pytest.fixture(scope='module')
def trained(tiny_cityscapes, tmp_path_factory):
    results = {}
    for i, (name, (make, widths, _)) in enumerate(RUNS.items()):
        work_dir = str(tmp_path_factory.mktemp(f'model{i}'))
        results[name] = train(shrink(make(), tiny_cityscapes, work_dir, widths))
    return results


@pytest.mark.parametrize('name', list(RUNS))
def test_each_model_trains_and_cals_hook_updates_every_loss(trained, name):
    result = trained[name]
    assert sorted(result) == sorted(RUNS[name][2])
    for label, (before, after) in result.items():
        assert not torch.equal(before, after), label  # updated at the one validation
        assert torch.isfinite(after).all() and (after > 0).all(), label


@pytest.mark.parametrize('name', list(MMSEG_BASE))
def test_our_model_configs_are_add_cals_of_mmsegs(name):
    """Each config is mmseg's, with exactly what add_cals adds; nothing else differs."""

    def plain(node):  # mmengine tags dicts inherited through mmseg:: with _scope_
        if isinstance(node, dict):
            return {k: plain(v) for k, v in node.items() if k != '_scope_'}
        if isinstance(node, (list, tuple)):
            return type(node)(plain(v) for v in node)
        return node

    ours = load(name).to_dict()
    assert ours.pop('num_classes') == 19
    assert plain(ours) == plain(add_cals(load(MMSEG_BASE[name])).to_dict())


def test_add_cals_on_mmsegs_pspnet_config():
    cfg = pspnet_with_add_cals()
    losses = {key: head['loss_decode'] for key in HEADS for head in [cfg.model[key]]}
    assert [loss['type'] for loss in losses['decode_head']] == ['CrossEntropyLoss', 'CALSLoss']
    assert losses['decode_head'][1]['loss_weight'] == 1.0
    assert losses['auxiliary_head'][1] == dict(type='CALSLoss', num_classes=19,
                                               loss_weight=0.4)
    assert [hook['type'] for hook in cfg.custom_hooks] == ['CALSHook']
    for key in ('val_evaluator', 'test_evaluator'):
        assert [m['type'] for m in cfg[key]] == ['IoUMetric', 'PixelCalibrationMetric']
    assert 'mmcals' in cfg.custom_imports['imports']
    # The built model holds the losses with those weights.
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS as SEG_MODELS
    init_default_scope('mmseg')
    cfg.merge_from_dict(MODELS['pspnet-cals_r50-d8_4xb2-80k_cityscapes-512x1024.py'][0])
    found = CALSHook.find_losses(SEG_MODELS.build(cfg.model))
    assert {label: loss.loss_weight for label, (loss, _) in found.items()} == {
        'decode_head': 1.0, 'auxiliary_head': 0.4}


def test_add_cals_is_idempotent_and_passes_loss_and_hook_arguments():
    cfg = add_cals(load(MMSEG_PSPNET), margin=5, hook=dict(source='train', interval=10),
                   metric=dict(num_bins=20), penalty='p2')
    again = add_cals(Config(cfg.to_dict()), margin=7)
    assert again.to_dict() == cfg.to_dict()
    for _, loss in cals_entries(cfg):
        assert (loss['margin'], loss['penalty']) == (5.0, 'p2')
    assert cfg.custom_hooks == [dict(type='CALSHook', source='train', interval=10)]
    assert cfg.val_evaluator[1] == dict(type='PixelCalibrationMetric', num_bins=20)


def test_add_cals_handles_lists_of_heads_and_plain_dicts():
    head = dict(type='FCNHead', num_classes=5,
                loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.7))
    cfg = dict(model=dict(decode_head=[dict(head), dict(head, num_classes=5)],
                          auxiliary_head=[dict(head, num_classes=3)]),
               val_evaluator=dict(type='IoUMetric'))
    add_cals(cfg)
    assert [h['loss_decode'][1] for h in cfg['model']['decode_head']] == [
        dict(type='CALSLoss', num_classes=5, loss_weight=0.7)] * 2
    assert cfg['model']['auxiliary_head'][0]['loss_decode'][1]['num_classes'] == 3
    assert [m['type'] for m in cfg['val_evaluator']] == ['IoUMetric', 'PixelCalibrationMetric']
    assert 'test_evaluator' not in cfg


@pytest.mark.parametrize('losses, message', [
    (dict(type='FocalLoss', use_sigmoid=True), '0 softmax CrossEntropyLoss'),
    (dict(type='CrossEntropyLoss', use_sigmoid=True), '0 softmax CrossEntropyLoss'),
    ([dict(type='CrossEntropyLoss'), dict(type='CrossEntropyLoss')], '2 softmax'),
])
def test_add_cals_refuses_heads_it_cannot_pair_and_changes_nothing(losses, message):
    cfg = dict(model=dict(
        decode_head=dict(type='FCNHead', num_classes=4,
                         loss_decode=dict(type='CrossEntropyLoss')),
        auxiliary_head=dict(type='FCNHead', num_classes=4, loss_decode=losses)))
    before = repr(cfg)
    with pytest.raises(ValueError, match=message) as error:
        add_cals(cfg)
    assert 'auxiliary_head.loss_decode' in str(error.value) and 'by hand' in str(error.value)
    assert repr(cfg) == before


def test_add_cals_refuses_heads_without_loss_decode_or_models_without_heads():
    with pytest.raises(ValueError, match='no loss_decode'):
        add_cals(dict(model=dict(decode_head=dict(type='Mask2FormerHead', num_classes=4))))
    with pytest.raises(ValueError, match='no decode_head'):
        add_cals(dict(model=dict(type='EncoderDecoder')))
    with pytest.raises(ValueError, match='num_classes'):
        add_cals(dict(model=dict(decode_head=dict(loss_decode=dict(type='CrossEntropyLoss')))))
    with pytest.raises(ValueError, match='loss_weight'):
        add_cals(load(MMSEG_PSPNET), loss_weight=2.0)


def test_command_line_writes_a_config_that_loads_as_a_plain_file(tmp_path, capsys):
    out = tmp_path / 'my_pspnet_cals.py'
    assert main([MMSEG_PSPNET, str(out), '--margin', '5', '--source', 'train']) == 0
    child = tmp_path / 'child.py'  # a user's config inheriting the written one
    child.write_text("_base_ = './my_pspnet_cals.py'\ntrain_cfg = dict(max_iters=10)\n")
    cfg = Config.fromfile(str(child))
    assert [(key, loss['loss_weight'], loss['margin']) for key, loss in cals_entries(cfg)] == [
        ('decode_head', 1.0, 5.0), ('auxiliary_head', 0.4, 5.0)]
    assert cfg.custom_hooks == [dict(type='CALSHook', source='train')]
    assert cfg.train_cfg.max_iters == 10
    # An existing file is not overwritten without --force; nothing half-written is left.
    assert main([MMSEG_PSPNET, str(out)]) == 2
    assert 'exists' in capsys.readouterr().err
    assert main(['mmseg::pspnet/no_such_config.py', str(tmp_path / 'x.py')]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ['child.py', 'my_pspnet_cals.py']


def test_a_model_needing_compiled_mmcv_ops_names_the_op_and_the_fix():
    """PSANet's PSAMask is a compiled mmcv op: with mmcv-lite its forward says what to install;
    with a compiled mmcv it trains."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS as SEG_MODELS

    init_default_scope('mmseg')
    cfg = add_cals(Config.fromfile(resolve_config_path('mmseg::_base_/models/psanet_r50-d8.py')))
    cfg.merge_from_dict({**MODELS['pspnet-cals_r50-d8_4xb2-80k_cityscapes-512x1024.py'][0],
                         'model.backbone.norm_cfg.type': 'BN',
                         'model.decode_head.norm_cfg.type': 'BN',
                         'model.auxiliary_head.norm_cfg.type': 'BN',
                         'model.decode_head.mask_size': (8, 8)})
    model = SEG_MODELS.build(cfg.model)
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    sample = SegDataSample(gt_sem_seg=PixelData(data=torch.zeros(1, 64, 64, dtype=torch.long)))
    sample.set_metainfo({'img_shape': (64, 64), 'pad_shape': (64, 64)})
    # A compiled extension module has a file; mmcals' stand-in for mmcv-lite has none.
    compiled = getattr(sys.modules.get('mmcv._ext'), '__file__', None) is not None
    if not compiled:
        with pytest.raises(RuntimeError) as error:
            model.loss(torch.randn(1, 3, 64, 64), [sample])
        message = str(error.value).lower()
        assert "'psamask_forward'" in message and 'install a compiled mmcv 2.1.x' in message
    else:
        losses = model.loss(torch.randn(1, 3, 64, 64), [sample])
        assert torch.isfinite(losses['decode.loss_cals'])
