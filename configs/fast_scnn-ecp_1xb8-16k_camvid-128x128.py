# The last schedule of the CamVid study, the one it reports (docs/results_camvid.md): the
# 2000-iteration config with its length set to 16,000 iterations (poly decay to iteration
# 16,000; validation and CALS updates stay every 250 iterations). A run takes an hour or more on
# one CPU core, so a checkpoint is kept every 1000 iterations (the last one only): a stopped run
# goes on with `--resume`.
_base_ = './fast_scnn-ecp_1xb8-2k_camvid-128x128.py'
max_iters = 16000
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(max_iters=max_iters)
default_hooks = dict(checkpoint=dict(interval=1000, max_keep_ckpts=1))
