# DeepLabV3-R18-D8 on CamVid with cross-entropy: the reference of the CamVid comparison.
# Every configs/deeplabv3_r18_*_camvid.py shares _base_/camvid_deeplabv3_r18.py and differs
# only in loss_decode (decode head, and auxiliary head at 0.4 as mmseg does).
_base_ = './_base_/camvid_deeplabv3_r18.py'
# _delete_ drops the base's CrossEntropyLoss arguments (use_sigmoid) instead of merging.
model = dict(
    decode_head=dict(loss_decode=dict(
        _delete_=True, type='CrossEntropyLoss', loss_weight=1.0)),
    auxiliary_head=dict(loss_decode=dict(
        _delete_=True, type='CrossEntropyLoss', loss_weight=0.4)))
