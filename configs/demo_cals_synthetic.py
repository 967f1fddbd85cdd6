# Demo with CALS: cross-entropy plus the class-adaptive penalty on both heads; the
# multipliers are updated from the validation outputs after every validation (cals.md §3).
_base_ = './_base_/demo_synthetic_streets.py'
model = dict(
    decode_head=dict(loss_decode=[
        dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        dict(type='CALSLoss', num_classes={{_base_.num_classes}}, loss_weight=1.0),
    ]),
    auxiliary_head=dict(loss_decode=[
        dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4),
        dict(type='CALSLoss', num_classes={{_base_.num_classes}}, loss_weight=0.4),
    ]))
custom_hooks = [dict(type='CALSHook')]
