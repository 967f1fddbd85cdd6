# The demo set-up: Fast-SCNN trained from scratch on the built-in synthetic street scenes
# (mmcals.datasets.SyntheticStreetsDataset, rendered into data_root on first use). Only the
# loss differs between demo runs.
#
# The regime, chosen before CE and CALS were compared: CALS is a remedy for a cross-entropy
# model that is over-confident on data it was not trained on, and its penalty acts only on
# logit gaps beyond the margin (docs/method.md §1). Cross-entropy keeps pushing the gaps of
# training pixels apart as long as it can lower their loss, so gaps grow, and confidence
# outruns held-out accuracy, when the model can memorise its training set: many passes over
# few images, with nothing else holding the logits back. Hence:
# - little data: 10 training scenes (with the generator's annotation noise to memorise) and
#   the 20 validation scenes recorded under other conditions, as real validation sets are;
# - a long schedule for that data: 400 iterations of batch 4 are 160 passes over each image;
# - mmseg's Fast-SCNN recipe otherwise (SGD with momentum 0.9, weight decay 4e-5, poly
#   decay; its learning rate 0.12 for 16 images per step scaled to our 4: 0.03), softmax
#   cross-entropy, flips as the only augmentation, no auxiliary heads;
# - GroupNorm instead of the base's BN: from scratch, at 4 images per batch and over 400
#   iterations, BN's running averages (momentum 0.01 in mmseg's Fast-SCNN) lag the weights
#   and its pyramid-pooling branch normalises 4 values, so the evaluated model is not the
#   trained one (a CE check with BN scored 56% pixel accuracy on its own training images in
#   eval mode, 95% in train mode); GN computes the same function in both (Wu & He, 2018);
# - the paper's margin (10, CALSLoss's default) and λ updates after every validation (every
#   50 iterations, 8 updates), so the constraint has time to act once the gaps pass 10.
# Fast-SCNN (1.4 M parameters) at 96x128 keeps both runs inside the demo's time budget on a
# 2-core CPU; it needs no compiled mmcv ops.
_base_ = [
    'mmseg::_base_/models/fast_scnn.py',
    'mmseg::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmcals'], allow_failed_imports=False)
num_classes = 8
image_size = (96, 128)
data_root = 'work_dirs/demo/data'
norm_cfg = dict(_delete_=True, type='GN', num_groups=8, requires_grad=True)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=image_size),
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(
        num_classes=num_classes, norm_cfg=norm_cfg,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=None)

dataset = dict(type='SyntheticStreetsDataset', data_root=data_root, image_size=image_size,
               num_train=10, num_val=20)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4, num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(dataset, split='train', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(dataset, split='val', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='PixelCalibrationMetric'),
]
test_evaluator = val_evaluator

max_iters = 400
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=0.03, momentum=0.9, weight_decay=4e-5))
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=50)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='nccl'))
randomness = dict(seed=0)
