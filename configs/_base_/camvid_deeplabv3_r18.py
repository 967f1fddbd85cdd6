# DeepLabV3-R18-D8 on CamVid (11 classes), sized to train on a CPU: the shared part of the
# configs/deeplabv3_r18_*_camvid.py family, which differ only in the decode/auxiliary loss.
# Data (_base_/camvid_data.py): 128x128 crops of images resized to about 240x180, batch 4;
# 2000 iterations, validation on the 101 val images (whole 240x180 images) every 500. No
# pretrained weights (none can be fetched offline).
_base_ = [
    'mmseg::_base_/models/deeplabv3_r50-d8.py',
    'mmseg::_base_/default_runtime.py',
    './camvid_data.py',
]
num_classes = {{_base_.num_classes}}
crop_size = {{_base_.crop_size}}

# BN, not mmseg's SyncBN: identical on one process and it also works under CPU DDP (gloo).
norm_cfg = dict(type='BN', requires_grad=True)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(depth=18, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=512, channels=128, num_classes=num_classes,
                     norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, channels=64, num_classes=num_classes,
                        norm_cfg=norm_cfg))

max_iters = 2000
val_interval = 500
optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None)
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=val_interval)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=val_interval,
                    max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
randomness = dict(seed=0)
