# The CALS Cityscapes config shrunk to seconds on a CPU, for the CALSHook tests: a narrow
# ResNet-18, 64x128 images without random augmentation, 4 iterations, validation every 2.
# GroupNorm and no dropout make a forward pass independent of how a batch is split, so a
# 2-process run and a single process see the same logits when the learning rate is 0.
_base_ = '../../configs/deeplabv3_cals_cityscapes.py'
crop_size = (64, 128)
norm_cfg = dict(type='GN', num_groups=4, requires_grad=True)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(depth=18, stem_channels=16, base_channels=16, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=128, channels=32, dropout_ratio=0, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=64, channels=16, dropout_ratio=0, norm_cfg=norm_cfg))
pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=False),
    dataset=dict(pipeline=pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False, dataset=dict(pipeline=pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=4, val_interval=2)
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=4, by_epoch=False)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
randomness = dict(seed=0)
