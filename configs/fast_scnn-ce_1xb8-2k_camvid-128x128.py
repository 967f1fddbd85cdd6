# Fast-SCNN on CamVid with cross-entropy: the reference of the converged CamVid study. Every
# configs/fast_scnn-*_1xb8-2k_camvid-128x128.py shares _base_/camvid_fast_scnn.py and differs
# only in the decode head's loss.
_base_ = './_base_/camvid_fast_scnn.py'
