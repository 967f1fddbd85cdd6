# DeepLabV3-R50-D8 on PASCAL VOC 2012 in the CALS paper's setting (1,171 training images,
# 293 held out for the multipliers, tested on the 1,449 `val` images; batch 8, 100 epochs),
# cross-entropy: the reference of the family. Every
# configs/deeplabv3-*_r50-d8_1xb8-100e_voc12-512x512.py shares
# _base_/voc12_deeplabv3_r50-d8.py and differs only in the loss of the decode head.
_base_ = './_base_/voc12_deeplabv3_r50-d8.py'
