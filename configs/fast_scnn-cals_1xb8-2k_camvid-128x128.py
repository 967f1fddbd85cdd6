# Fast-SCNN on CamVid with CALS (Liu et al., CVPR 2023): cross-entropy plus the class-adaptive
# penalty (the paper's margin, 10) on the decode head; CALSHook updates one multiplier per class
# from the validation outputs after every validation, every 250 iterations (docs/method.md §3).
# A margin chosen on a calibration split: --cfg-options model.decode_head.loss_decode.1.margin=M
# See fast_scnn-ce_1xb8-2k_camvid-128x128.py.
_base_ = './_base_/camvid_fast_scnn.py'
model = dict(decode_head=dict(loss_decode=[
    dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    dict(type='CALSLoss', num_classes={{_base_.num_classes}}, loss_weight=1.0),
]))
custom_hooks = [dict(type='CALSHook')]
