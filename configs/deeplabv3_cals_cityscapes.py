# DeepLabV3-R50-D8 on Cityscapes with CALS (Liu et al., CVPR 2023): cross-entropy plus the
# class-adaptive penalty on the decode and auxiliary heads; CALSHook learns one multiplier per
# class from the validation outputs after every validation run (docs/method.md §3).
_base_ = './deeplabv3_ce_cityscapes.py'
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
