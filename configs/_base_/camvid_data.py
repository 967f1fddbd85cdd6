# CamVid (11 classes) sized for a CPU, shared by the configs/*_camvid*.py families: images
# resized to about 240x180 (random scale 0.5-2.0 of that), 128x128 training crops, whole
# 240x180 images for validation and test, mIoU next to the pixel calibration metrics.
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
custom_imports = dict(imports=['mmcals'], allow_failed_imports=False)

num_classes = 11
dataset_type = 'CamVidDataset'
data_root = '{{$CAMVID_ROOT:data/camvid}}'
image_scale = (240, 180)
crop_size = (128, 128)

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
