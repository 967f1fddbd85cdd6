# DeepLabV3-R50-D8 on PASCAL VOC 2012 with the SBD extra annotations ("VOC-aug", 10,582
# training images), as mmseg users usually train it: mmseg's own
# deeplabv3_r50-d8_4xb4-40k_voc12aug-512x512.py (ImageNet ResNetV1c weights, auxiliary FCN head
# at loss weight 0.4, 40k iterations at batch 16, mmseg's VOC pipelines) with one change to the
# data: the 293 images of data_splits/voc2012/myval.txt (the CALS reference code's held-out
# part of VOC `train`) are taken out of training and are the validation set from which
# CALSHook updates the multipliers; VOC `val` (1,449 images) is the test set. So training
# uses 10,289 images: the other 1,171 VOC `train` images (SegmentationClass/) and the 9,118
# SBD images of aug.txt (SegmentationClassAug/). The shared part of the
# configs/deeplabv3-*_r50-d8_4xb4-40k_voc12aug-512x512.py family, which differ only in the loss.
#
# Data preparation (mmseg's tools/dataset_converters/voc_aug.py writes SegmentationClassAug/
# and ImageSets/Segmentation/aug.txt), see docs/model_zoo.md. data_root is VOCdevkit/VOC2012,
# relative to the working directory or from the VOC_ROOT environment variable. The ImageNet
# weights are downloaded on first use (needs the internet, or model.pretrained=<local .pth>).
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb4-40k_voc12aug-512x512.py'
custom_imports = dict(imports=['mmcals'], allow_failed_imports=False)

num_classes = 21
dataset_type = 'PascalVOCDataset'
data_root = '{{$VOC_ROOT:data/VOCdevkit/VOC2012}}'
splits = '{{fileDirname}}/../../data_splits/voc2012'

train_dataloader = dict(dataset=dict(datasets=[
    dict(type=dataset_type, data_root=data_root,
         data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
         ann_file=f'{splits}/mytrain.txt', pipeline={{_base_.train_pipeline}}),
    dict(type=dataset_type, data_root=data_root,
         data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
         ann_file='ImageSets/Segmentation/aug.txt', pipeline={{_base_.train_pipeline}}),
]))
val_dataloader = dict(dataset=dict(data_root=data_root, ann_file=f'{splits}/myval.txt'))
test_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
                 ann_file='ImageSets/Segmentation/val.txt', pipeline={{_base_.test_pipeline}}))

# mIoU next to the pixel calibration metrics (docs/method.md §4; 15 bins).
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='PixelCalibrationMetric'),
]
test_evaluator = val_evaluator
# Validation on the 293 held-out images every 1000 iterations (about 1.6 epochs of the 10,289
# training images at batch 16): 40 multiplier updates in the 40k iterations.
train_cfg = dict(val_interval=1000)
default_hooks = dict(checkpoint=dict(interval=4000, max_keep_ckpts=1))
