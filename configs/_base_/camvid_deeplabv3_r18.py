# DeepLabV3-R18-D8 on CamVid (11 classes), sized to train on a CPU: the shared part of the
# configs/deeplabv3_r18_*_camvid.py family, which differ only in the decode/auxiliary loss.
#
# Data: CamVid's 480x360 images are resized to about 240x180 (random scale 0.5-2.0 of that)
# and trained on 128x128 crops, batch 4, 2000 iterations, validation on the 101 val images
# (whole 240x180 images) every 500. No pretrained weights (none can be fetched offline).
#
# data_root is data/camvid (mmseg's convention), relative to the working directory (run the
# tools from the repository root), or the CAMVID_ROOT environment variable when it is set:
# CAMVID_ROOT=/data/camvid python tools/train.py ... (README: where CamVid comes from).
# Unlabelled (11 on disk) is read as 255 by CamVidDataset, so losses, decode heads, metrics
# and padding all keep mmseg's default ignore index 255.
#
# Subsets: train.txt/val.txt hold "image label" pairs relative to data_root; an ann_file of
# file stems is resolved in data_prefix instead. Driving sequences (file-name prefixes) can be
# selected with the dataset's sequences=[...] or exclude_sequences=[...], e.g. to hold one out:
#   --cfg-options "train_dataloader.dataset.exclude_sequences=[0001TP]"
# (--cfg-options reads an id like 0016E5 as a number: name such ids in a config file), and
# train_dataloader.dataset.indices=N keeps the first N images (quick checks).
_base_ = [
    'mmseg::_base_/models/deeplabv3_r50-d8.py',
    'mmseg::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmcals'], allow_failed_imports=False)

num_classes = 11
dataset_type = 'CamVidDataset'
data_root = '{{$CAMVID_ROOT:data/camvid}}'
image_scale = (240, 180)
crop_size = (128, 128)

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

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=image_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    # Labels are loaded after the resize so metrics are computed at the original 480x360.
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='train.txt',
                 data_prefix=dict(img_path='train', seg_map_path='trainannot'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='val.txt',
                 data_prefix=dict(img_path='val', seg_map_path='valannot'),
                 pipeline=test_pipeline))
# The SegNet CamVid copy has no test split here; testing reuses val.
test_dataloader = val_dataloader

# mIoU next to the pixel calibration metrics (docs/method.md §4), for validation and test.
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='PixelCalibrationMetric'),
]
test_evaluator = val_evaluator

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
