# DeepLabV3-R50-D8 on PASCAL VOC 2012 in the CALS paper's setting (1,171 training images,
# 293 held out for the multipliers, tested on the 1,449 `val` images; batch 8, 100 epochs),
# with the softmax focal loss (γ = 3).
# A baseline of deeplabv3-cals_r50-d8_1xb8-100e_voc12-512x512.py;
# see _base_/voc12_deeplabv3_r50-d8.py.
_base_ = './_base_/voc12_deeplabv3_r50-d8.py'
# _delete_ drops the base's CrossEntropyLoss arguments (use_sigmoid) instead of merging.
model = dict(
    decode_head=dict(loss_decode=dict(
        _delete_=True, type='SoftmaxFocalLoss', gamma=3.0, loss_weight=1.0)))
