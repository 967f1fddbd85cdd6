# The segmentation setting of the CALS paper (Liu et al., CVPR 2023) and its reference code
# (github.com/by-liu/CALS): DeepLabV3 with an ImageNet-pretrained ResNet-50 on PASCAL VOC 2012,
# batch 8, 100 epochs, SGD, calibration in 15 bins. The shared part of the
# configs/deeplabv3-*_r50-d8_1xb8-100e_voc12-512x512.py family, which differ only in the loss.
#
# Data: the 1,464 VOC 2012 `train` images, split by the reference code into 1,171 for training
# (data_splits/voc2012/mytrain.txt) and 293 held out (myval.txt), the validation set during
# training from which CALSHook updates the multipliers once per epoch; `val` (1,449 images) is
# the test set, used by tools/test.py only. data_root is VOCdevkit/VOC2012 (JPEGImages/,
# SegmentationClass/, ImageSets/Segmentation/val.txt), relative to the working directory or
# from the VOC_ROOT environment variable. The split lists are read from this repository (or
# the installed mmcals) through {{fileDirname}}; nothing needs copying into the dataset.
#
# Model: mmseg's DeepLabV3 R50-D8 (ResNetV1c, output stride 8, ASPP rates 12/24/36) with its
# ImageNet weights (open-mmlab://resnet50_v1c, downloaded on first use: needs the internet, or
# model.pretrained=<local .pth>). Like the reference model, no auxiliary head.
# Where this differs from the reference code (which uses segmentation_models_pytorch and
# albumentations): mmseg's ResNetV1c (deep stem) instead of torchvision's ResNet-50; its
# learning rate and schedule for VOC are not stated in its configs, so mmseg's usual SGD
# (lr 0.01, poly decay) is used; test images are resized to a longest side of 480 as there,
# but the metrics are computed on the original-size labels.
_base_ = [
    'mmseg::_base_/models/deeplabv3_r50-d8.py',
    'mmseg::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmcals'], allow_failed_imports=False)

num_classes = 21
dataset_type = 'PascalVOCDataset'
data_root = '{{$VOC_ROOT:data/VOCdevkit/VOC2012}}'
splits = '{{fileDirname}}/../../data_splits/voc2012'
crop_size = (512, 512)

data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(num_classes=num_classes),
    auxiliary_head=None)

# As the reference: longest side 640, random 512x512 crops (the data preprocessor pads smaller
# crops with label 255), flips and colour jitter; test at a longest side of 480.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=(640, 640), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(480, 480), keep_ratio=True),
    # Labels are loaded after the resize so metrics are computed at the original size.
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
data_prefix = dict(img_path='JPEGImages', seg_map_path='SegmentationClass')
train_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, data_prefix=data_prefix,
                 ann_file=f'{splits}/mytrain.txt', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, data_prefix=data_prefix,
                 ann_file=f'{splits}/myval.txt', pipeline=test_pipeline))
test_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, data_prefix=data_prefix,
                 ann_file='ImageSets/Segmentation/val.txt', pipeline=test_pipeline))

# mIoU next to the pixel calibration metrics (docs/method.md §4; 15 bins, the metric's
# default and the paper's).
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='PixelCalibrationMetric'),
]
test_evaluator = val_evaluator

max_epochs = 100
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005),
    # The reference clips the gradient norm at 2.
    clip_grad=dict(max_norm=2.0, norm_type=2))
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_epochs, by_epoch=True,
         convert_to_iter_based=True),
]
# Validation on the held-out 293 images after every epoch: one multiplier update per epoch.
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=True),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=True, interval=10, max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
log_processor = dict(by_epoch=True)
randomness = dict(seed=1)  # the reference's seed
