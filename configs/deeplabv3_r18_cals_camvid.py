# DeepLabV3-R18-D8 on CamVid with CALS (Liu et al., CVPR 2023): cross-entropy plus the
# class-adaptive penalty on both heads; CALSHook learns one multiplier per class from the
# validation outputs after every validation run (docs/method.md §3). See deeplabv3_r18_ce_camvid.py.
_base_ = './_base_/camvid_deeplabv3_r18.py'
model = dict(
    decode_head=dict(loss_decode=[
        dict(type='CrossEntropyLoss', loss_weight=1.0),
        dict(type='CALSLoss', num_classes={{_base_.num_classes}}, loss_weight=1.0),
    ]),
    auxiliary_head=dict(loss_decode=[
        dict(type='CrossEntropyLoss', loss_weight=0.4),
        dict(type='CALSLoss', num_classes={{_base_.num_classes}}, loss_weight=0.4),
    ]))
custom_hooks = [dict(type='CALSHook')]
