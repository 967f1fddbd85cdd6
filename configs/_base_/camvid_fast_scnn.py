# Fast-SCNN on CamVid (11 classes), from scratch, sized to converge on a 2-core CPU: the
# shared part of the configs/fast_scnn-*_1xb8-2k_camvid-128x128.py family (the converged
# CamVid study, docs/results_camvid.md), which differ only in the decode head's loss.
#
# - Model: mmseg's Fast-SCNN (1.4 M parameters, no compiled mmcv ops) with BN instead of
#   SyncBN (identical on one process, and it works under CPU DDP), softmax cross-entropy
#   (mmseg's file uses use_sigmoid=True). Its two auxiliary FCN heads keep cross-entropy at
#   weight 0.4 in every method: they only help train the backbone and are not evaluated, so
#   the method under study is the loss of the head whose output is evaluated.
# - Data (_base_/camvid_data.py): 128x128 crops of images resized to about 240x180, batch 8.
# - Schedule: mmseg's Fast-SCNN optimiser (SGD, momentum 0.9, weight decay 4e-5; lr 0.12 for
#   32 images per step scaled to our 8: 0.03), poly decay to 1e-4 over 2000 iterations,
#   about 60 passes over the 266 images of the study's training part.
_base_ = [
    'mmseg::_base_/models/fast_scnn.py',
    'mmseg::_base_/default_runtime.py',
    './camvid_data.py',
]
num_classes = {{_base_.num_classes}}
crop_size = {{_base_.crop_size}}
norm_cfg = dict(type='BN', requires_grad=True, momentum=0.01)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(
        num_classes=num_classes, norm_cfg=norm_cfg,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=[
        dict(type='FCNHead', in_channels=128, channels=32, num_convs=1,
             num_classes=num_classes, in_index=-2, norm_cfg=norm_cfg, concat_input=False,
             align_corners=False,
             loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
        dict(type='FCNHead', in_channels=64, channels=32, num_convs=1,
             num_classes=num_classes, in_index=-3, norm_cfg=norm_cfg, concat_input=False,
             align_corners=False,
             loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    ])
train_dataloader = dict(batch_size=8)

max_iters = 2000
val_interval = 250
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=0.03, momentum=0.9, weight_decay=4e-5))
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=val_interval)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
