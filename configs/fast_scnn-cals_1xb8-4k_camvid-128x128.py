# The second schedule of the CamVid study (docs/results_camvid.md, which reports the 16k one):
# the 2000-iteration config with every length doubled to 4000 iterations (poly decay to
# iteration 4000, one checkpoint at the end; validation and CALS updates stay every 250
# iterations).
_base_ = './fast_scnn-cals_1xb8-2k_camvid-128x128.py'
max_iters = 4000
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(max_iters=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters))
