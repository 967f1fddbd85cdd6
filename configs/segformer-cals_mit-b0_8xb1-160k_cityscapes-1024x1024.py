# SegFormer-MiT-B0 on Cityscapes with CALS (Liu et al., CVPR 2023): mmseg's own
# segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py (Mix Transformer backbone, one all-MLP
# decode head, no auxiliary head) unchanged but for the class-adaptive penalty next to the
# decode head's cross-entropy, at its weight (1.0).
# CALSHook updates one multiplier per class after every validation (docs/method.md §3). The CE
# baseline is the mmseg config itself. This file is what mmcals.config_utils.add_cals makes of
# that config (tests/test_model_configs.py checks it).
_base_ = 'mmseg::segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py'
custom_imports = dict(imports=['mmcals'], allow_failed_imports=False)
num_classes = 19
model = dict(
    decode_head=dict(loss_decode=[
        dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        dict(type='CALSLoss', num_classes=num_classes, loss_weight=1.0),
    ]))
custom_hooks = [dict(type='CALSHook')]
# mIoU next to the pixel calibration metrics (docs/method.md §4).
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='PixelCalibrationMetric'),
]
test_evaluator = val_evaluator
