# DeepLabV3-R18-D8 on CamVid with the explicit confidence penalty (ECP, β = 0.1; the CE term is
# part of ConfidencePenaltyLoss); see deeplabv3_r18_ce_camvid.py.
_base_ = './_base_/camvid_deeplabv3_r18.py'
# _delete_ drops the base's CrossEntropyLoss arguments (use_sigmoid) instead of merging.
model = dict(
    decode_head=dict(loss_decode=dict(
        _delete_=True, type='ConfidencePenaltyLoss', beta=0.1, loss_weight=1.0)),
    auxiliary_head=dict(loss_decode=dict(
        _delete_=True, type='ConfidencePenaltyLoss', beta=0.1, loss_weight=0.4)))
