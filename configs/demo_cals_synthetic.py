# Demo with CALS: cross-entropy plus the class-adaptive penalty (the paper's margin, 10); the
# multipliers are updated from the validation outputs after every validation (docs/method.md
# §3).
_base_ = './_base_/demo_synthetic_streets.py'
model = dict(
    decode_head=dict(loss_decode=[
        dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        dict(type='CALSLoss', num_classes={{_base_.num_classes}}, loss_weight=1.0),
    ]))
custom_hooks = [dict(type='CALSHook')]
