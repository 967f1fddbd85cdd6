# DeepLabV3-R50-D8 on VOC-aug (mmseg's 40k schedule at batch 16; 293 VOC `train` images
# held out for the multipliers, tested on the 1,449 `val` images),
# cross-entropy: the reference of the family. Every
# configs/deeplabv3-*_r50-d8_4xb4-40k_voc12aug-512x512.py shares
# _base_/voc12aug_deeplabv3_r50-d8.py and differs only in the loss of the decode
# and auxiliary heads (0.4).
_base_ = './_base_/voc12aug_deeplabv3_r50-d8.py'
