# DeepLabV3-R50-D8 on PASCAL VOC 2012 in the CALS paper's setting (1,171 training images,
# 293 held out for the multipliers, tested on the 1,449 `val` images; batch 8, 100 epochs),
# with CALS (Liu et al., CVPR 2023): cross-entropy plus the class-adaptive penalty on the
# decode head; CALSHook updates one multiplier per class after every validation on
# the held-out images (docs/method.md §3). See _base_/voc12_deeplabv3_r50-d8.py.
_base_ = './_base_/voc12_deeplabv3_r50-d8.py'
model = dict(
    decode_head=dict(loss_decode=[
        dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        dict(type='CALSLoss', num_classes={{_base_.num_classes}}, loss_weight=1.0),
    ]))
custom_hooks = [dict(type='CALSHook')]
