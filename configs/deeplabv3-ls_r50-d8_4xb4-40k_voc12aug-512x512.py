# DeepLabV3-R50-D8 on VOC-aug (mmseg's 40k schedule at batch 16; 293 VOC `train` images
# held out for the multipliers, tested on the 1,449 `val` images),
# with label smoothing (ε = 0.05).
# A baseline of deeplabv3-cals_r50-d8_4xb4-40k_voc12aug-512x512.py;
# see _base_/voc12aug_deeplabv3_r50-d8.py.
_base_ = './_base_/voc12aug_deeplabv3_r50-d8.py'
# _delete_ drops the base's CrossEntropyLoss arguments (use_sigmoid) instead of merging.
model = dict(
    decode_head=dict(loss_decode=dict(
        _delete_=True, type='LabelSmoothingLoss', epsilon=0.05, loss_weight=1.0)),
    auxiliary_head=dict(loss_decode=dict(
        _delete_=True, type='LabelSmoothingLoss', epsilon=0.05, loss_weight=0.4)))
