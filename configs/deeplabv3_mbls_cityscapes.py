# DeepLabV3-R50-D8 on Cityscapes with margin-based label smoothing (MbLS, m = 10, α = 0.1;
# the CE term is part of MarginLoss).
# A baseline of deeplabv3_cals_cityscapes.py: model, data, schedule and evaluation come
# unchanged from deeplabv3_ce_cityscapes.py; only loss_decode differs (aux head at 0.4).
_base_ = './deeplabv3_ce_cityscapes.py'
# _delete_ drops the base's CrossEntropyLoss arguments (use_sigmoid) instead of merging.
model = dict(
    decode_head=dict(loss_decode=dict(
        _delete_=True, type='MarginLoss', margin=10.0, alpha=0.1, loss_weight=1.0)),
    auxiliary_head=dict(loss_decode=dict(
        _delete_=True, type='MarginLoss', margin=10.0, alpha=0.1, loss_weight=0.4)))
