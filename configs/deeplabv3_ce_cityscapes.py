# DeepLabV3-R50-D8 on Cityscapes, 512x1024 crops, mmseg's 80k schedule, cross-entropy only.
# The CE twin of deeplabv3_cals_cityscapes.py: same model, data, schedule and evaluation.
_base_ = [
    'mmseg::_base_/models/deeplabv3_r50-d8.py',
    'mmseg::_base_/datasets/cityscapes.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
]
custom_imports = dict(imports=['mmcals'], allow_failed_imports=False)
crop_size = (512, 1024)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor)
# mIoU next to the pixel calibration metrics (docs/method.md §4); a list replaces mmseg's IoUMetric.
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='PixelCalibrationMetric'),
]
test_evaluator = val_evaluator
