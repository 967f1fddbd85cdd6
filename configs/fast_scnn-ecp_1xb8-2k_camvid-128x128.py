# Fast-SCNN on CamVid with the explicit confidence penalty (ECP, β = 0.1; the CE term is part
# of ConfidencePenaltyLoss); see fast_scnn-ce_1xb8-2k_camvid-128x128.py.
_base_ = './_base_/camvid_fast_scnn.py'
model = dict(decode_head=dict(loss_decode=dict(
    _delete_=True, type='ConfidencePenaltyLoss', beta=0.1, loss_weight=1.0)))
