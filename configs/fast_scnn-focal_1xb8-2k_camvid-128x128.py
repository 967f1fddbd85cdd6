# Fast-SCNN on CamVid with the softmax focal loss (γ = 3, Mukhoti et al.'s FL-3); see
# fast_scnn-ce_1xb8-2k_camvid-128x128.py.
_base_ = './_base_/camvid_fast_scnn.py'
model = dict(decode_head=dict(loss_decode=dict(
    _delete_=True, type='SoftmaxFocalLoss', gamma=3.0, loss_weight=1.0)))
