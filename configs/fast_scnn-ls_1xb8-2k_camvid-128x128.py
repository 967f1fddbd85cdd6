# Fast-SCNN on CamVid with label smoothing (ε = 0.05, the CALS paper's LS setting); see
# fast_scnn-ce_1xb8-2k_camvid-128x128.py.
_base_ = './_base_/camvid_fast_scnn.py'
# _delete_ drops the base's CrossEntropyLoss arguments (use_sigmoid) instead of merging.
model = dict(decode_head=dict(loss_decode=dict(
    _delete_=True, type='LabelSmoothingLoss', epsilon=0.05, loss_weight=1.0)))
