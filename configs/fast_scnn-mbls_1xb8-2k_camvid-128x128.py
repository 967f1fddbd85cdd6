# Fast-SCNN on CamVid with margin-based label smoothing (MbLS, m = 10, α = 0.1 as in the MbLS
# reference; the CE term is part of MarginLoss); see fast_scnn-ce_1xb8-2k_camvid-128x128.py.
_base_ = './_base_/camvid_fast_scnn.py'
model = dict(decode_head=dict(loss_decode=dict(
    _delete_=True, type='MarginLoss', margin=10.0, alpha=0.1, loss_weight=1.0)))
