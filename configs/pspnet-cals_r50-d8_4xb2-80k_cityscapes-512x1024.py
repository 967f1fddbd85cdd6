# PSPNet-R50-D8 on Cityscapes with CALS (Liu et al., CVPR 2023): mmseg's own
# pspnet_r50-d8_4xb2-80k_cityscapes-512x1024.py (PSP decode head, FCN auxiliary head) unchanged
# but for the class-adaptive penalty next to the cross-entropy of both heads, each at the
# cross-entropy's weight (1.0 and 0.4).
# CALSHook updates one multiplier per class after every validation (docs/method.md §3). The CE
# baseline is the mmseg config itself. This file is what mmcals.config_utils.add_cals makes of
# that config (tests/test_model_configs.py checks it).
_base_ = 'mmseg::pspnet/pspnet_r50-d8_4xb2-80k_cityscapes-512x1024.py'
custom_imports = dict(imports=['mmcals'], allow_failed_imports=False)
num_classes = 19
model = dict(
    decode_head=dict(loss_decode=[
        dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        dict(type='CALSLoss', num_classes=num_classes, loss_weight=1.0),
    ]),
    auxiliary_head=dict(loss_decode=[
        dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4),
        dict(type='CALSLoss', num_classes=num_classes, loss_weight=0.4),
    ]))
custom_hooks = [dict(type='CALSHook')]
# mIoU next to the pixel calibration metrics (docs/method.md §4).
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='PixelCalibrationMetric'),
]
test_evaluator = val_evaluator
