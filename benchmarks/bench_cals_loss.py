"""Speed and memory of CALSLoss next to cross-entropy, printed side by side.

    python benchmarks/bench_cals_loss.py [--size 2 19 512 1024] [--repeat 5] [--step-size 128 256]

1. Forward+backward time and peak memory on Cityscapes-sized logits: CE alone, CE + CALSLoss,
   and CE + a naive autograd penalty (classes-last view, amax, both branches via torch.where)
   for scale. Peak memory counts what each variant allocates on top of the logits, from
   CUDA's allocator on a GPU or torch's profiler on the CPU.
2. The cost of the statistics a ``CALSHook(source='train')`` gathers in the loss's forward
   (the multiplier-update sums and the constraint diagnostics of docs/method.md §5): the same
   forward+backward with statistics off and on, and their ratio.
3. On the CPU, each CPU-specific path of mmcals/losses/_cals_kernel.py against the plain one
   it replaces (winner by sign, fused PHR derivative, zero-copy backward).
4. The share CALSLoss adds to one whole DeepLabV3-R18-D8 training step (decode and auxiliary
   heads, batch 2) at a small size.

Targets: CALS's own forward+backward <= 1.5x CE's; extra peak memory <= one logits-sized
tensor; <= 5% added to a training step; statistics on within 10% of statistics off.

Variants run in turn, round after round, and medians are reported, so that a load change on
a shared machine hits all of them alike. Set OMP_NUM_THREADS to the cores you can use; on a
CPU that other processes keep busy also set OMP_WAIT_POLICY=PASSIVE: GNU OpenMP's spinning
threads otherwise stall every parallel step, which hurts CALS's many chunk-sized steps far
more than CE's few large ones (measured here: 2.9 s instead of 0.10 s).
"""
import argparse
import dataclasses
import functools
import gc
import os
import os.path as osp
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmcals  # noqa: F401  (registers CALSLoss, applies stack fixes)
from mmcals.losses import CALSLoss, _cals_kernel
from mmcals.losses import cals as cals_module
from mmcals.losses.logit_gaps import GAP_BIN_WIDTH, GAP_NUM_BINS

MIB = 1 << 20


def naive_penalty(logits, labels, lam, rho, margin=10.0, ignore_index=255):
    """The straightforward autograd PHR penalty, for scale only."""
    z = logits.permute(0, 2, 3, 1)
    h = (z.amax(-1, keepdim=True) - z - margin) / margin
    x = lam + rho * h
    value = torch.where(x >= 0, (x * x - lam * lam) / (2 * rho), -lam * lam / (2 * rho))
    valid = (labels != ignore_index)[..., None]
    return (value * valid).sum() / (valid.sum().clamp_min(1) * z.shape[-1])


def peak_memory(step, device, reset):
    """Peak bytes allocated by ``step`` above what was allocated before it.

    On a GPU from the CUDA allocator's statistics; on the CPU from the allocation events of
    torch's profiler (exact, unlike the resident set, which the C allocator blurs).
    """
    reset()
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        events = [event for event in prof.profiler.kineto_results.events()
                  if event.name() == '[memory]']
        current = peak = 0
        for event in sorted(events, key=lambda event: event.start_ns()):
            current += event.nbytes()
            peak = max(peak, current)
    reset()
    return peak


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def timed(step, device):
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - start


def interleaved_medians(steps, device, repeat, reset=lambda: None):
    """Median time of each step, running them in turn so that load changes hit all alike."""
    times = {name: [] for name in steps}
    for i in range(repeat + 1):
        for name, step in steps.items():
            reset()
            elapsed = timed(step, device)
            if i:  # the first round warms up
                times[name].append(elapsed)
    reset()
    return {name: statistics.median(values) for name, values in times.items()}


def loss_benchmark(size, repeat, device):
    torch.manual_seed(0)
    num, num_classes, height, width = size
    logits = (torch.randn(size, device=device) * 4).requires_grad_()
    labels = torch.randint(0, num_classes, (num, height, width), device=device)
    labels[:, :16] = 255
    cals = CALSLoss(num_classes).to(device)
    cals.lambda_.uniform_(0.01, 1.0)
    lam = cals.lambda_.float().to(device)
    rho = cals.rho.float().to(device)

    def ce():
        F.cross_entropy(logits, labels, ignore_index=255).backward()

    def cals_only():
        cals(logits, labels).backward()

    def ce_cals():
        (F.cross_entropy(logits, labels, ignore_index=255) + cals(logits, labels)).backward()

    def ce_naive():
        (F.cross_entropy(logits, labels, ignore_index=255)
         + naive_penalty(logits, labels, lam, rho)).backward()

    steps = {'CE': ce, 'CALS alone': cals_only, 'CE + CALS': ce_cals,
             'CE + naive penalty': ce_naive}

    def reset():
        logits.grad = None

    medians = interleaved_medians(steps, device, repeat, reset)
    results = {name: (medians[name], peak_memory(step, device, reset))
               for name, step in steps.items()}
    logits_bytes = logits.numel() * logits.element_size()
    print(f'\nLoss forward+backward on logits {tuple(size)} float32 ({logits_bytes / MIB:.0f} '
          f'MiB), {device}, median of {repeat}:')
    ce_time, ce_peak = results['CE']
    print(f'  {"":22s}{"time (s)":>10s}{"x CE":>8s}{"peak (MiB)":>12s}{"extra vs CE":>13s}')
    for name, (seconds, peak) in results.items():
        extra = (peak - ce_peak) / logits_bytes
        print(f'  {name:22s}{seconds:10.3f}{seconds / ce_time:8.2f}{peak / MIB:12.0f}'
              f'{extra:+12.2f}L')
    own = results['CALS alone'][0]
    added = results['CE + CALS'][0] - ce_time
    print(f'  CALS own fwd+bwd = {own / ce_time:.2f}x CE (target <= 1.5x); CE+CALS adds '
          f'{added / ce_time:.2f}x CE; extra peak over CE = '
          f'{(results["CE + CALS"][1] - ce_peak) / logits_bytes:.2f} logits tensors '
          '(target <= 1); "L" = one logits-sized tensor')


def make_inputs(size, device):
    torch.manual_seed(0)
    num, num_classes, height, width = size
    logits = (torch.randn(size, device=device) * 4).requires_grad_()
    labels = torch.randint(0, num_classes, (num, height, width), device=device)
    labels[:, :16] = 255
    return logits, labels


def statistics_benchmark(size, repeat, device):
    """Forward+backward with the training statistics off and on (CALSHook(source='train'))."""
    logits, labels = make_inputs(size, device)
    cals = CALSLoss(size[1]).to(device).train()
    cals.lambda_.uniform_(0.01, 1.0)

    def step(collect, with_ce):
        def run():
            cals.collect_train_statistics = collect
            loss = cals(logits, labels)
            if with_ce:
                loss = loss + F.cross_entropy(logits, labels, ignore_index=255)
            loss.backward()
            cals.pop_train_statistics()
        return run

    steps = {'CALS, statistics off': step(False, False), 'CALS, statistics on': step(True, False),
             'CE + CALS, statistics off': step(False, True),
             'CE + CALS, statistics on': step(True, True)}

    # The floor: the gap histogram the diagnostics need (one count per pair), and nothing
    # else, from bin indices made beforehand, chunk by chunk and one bincount per class as in
    # the pass. No streamed histogram over every pair built on torch.bincount costs less.
    bins = _gap_bins(logits.detach())
    steps['gap histogram alone'] = functools.partial(_histogram_alone, bins)

    def reset():
        logits.grad = None

    times = interleaved_medians(steps, device, repeat, reset)
    print(f'\nStatistics in the forward pass (update sums + diagnostics), logits {tuple(size)}, '
          f'{device}, median of {repeat}:')
    for name, seconds in times.items():
        print(f'  {name:28s}{seconds:8.3f} s')
    for what in ('CALS', 'CE + CALS'):
        off = times[f'{what}, statistics off']
        ratio = times[f'{what}, statistics on'] / off
        floor = 1 + times['gap histogram alone'] / off
        print(f'  {what}: statistics on / off = {ratio:.3f} (target <= 1.10; the gap '
              f'histogram alone would give {floor:.3f})')


def _gap_bins(logits):
    """(N, C, P) int16 bin of each gap ``d = z_a - z`` (the winner's own included: the pass
    counts it too and subtracts it after)."""
    z = logits.flatten(2)
    d = (z.amax(1, keepdim=True) - z).mul_(1.0 / GAP_BIN_WIDTH).clamp_max_(GAP_NUM_BINS - 1)
    return d.to(torch.int16)


def _histogram_alone(bins):
    num, num_classes, num_pixels = bins.shape
    chunk = _cals_kernel._chunk_pixels(bins)
    for n in range(num):
        for start in range(0, num_pixels, chunk):
            part = bins[n, :, start:start + chunk]
            torch.stack([torch.bincount(row, minlength=GAP_NUM_BINS + 1) for row in part])


class _UnfusedCALSLoss(CALSLoss):
    """PHR through the generic penalty path, for comparison with the fused CPU path."""

    def _config(self, ignore_index):
        return dataclasses.replace(super()._config(ignore_index), fused_phr=False)


def cpu_paths_benchmark(size, repeat, device):
    """Each CPU-specific path of the kernel against the generic code it replaces."""
    logits, labels = make_inputs(size, device)
    fused, unfused = CALSLoss(size[1]), _UnfusedCALSLoss(size[1])
    for loss in (fused, unfused):
        loss.lambda_.uniform_(0.01, 1.0, generator=torch.Generator().manual_seed(1))

    def run(loss, sign_winner=True, zero_copy=True):
        def step():
            sign, copy = _cals_kernel._SIGN_WINNER_DEVICES, cals_module._ZERO_COPY_BACKWARD_DEVICES
            _cals_kernel._SIGN_WINNER_DEVICES = ('cpu',) if sign_winner else ()
            cals_module._ZERO_COPY_BACKWARD_DEVICES = ('cpu',) if zero_copy else ()
            try:
                loss(logits, labels).backward()
            finally:
                _cals_kernel._SIGN_WINNER_DEVICES = sign
                cals_module._ZERO_COPY_BACKWARD_DEVICES = copy
        return step

    steps = {'all CPU paths (default)': run(fused),
             'winner by torch.max index': run(fused, sign_winner=False),
             'PHR via the generic penalty': run(unfused),
             'backward copies the gradient': run(fused, zero_copy=False)}

    def reset():
        logits.grad = None

    times = interleaved_medians(steps, device, repeat, reset)
    base = times['all CPU paths (default)']
    print(f'\nCPU paths of the kernel, CALS forward+backward on {tuple(size)}, median of '
          f'{repeat}:')
    for name, seconds in times.items():
        print(f'  {name:32s}{seconds:8.3f} s{seconds / base:8.2f}x')


def clock(record, sign, module, *args):
    """Forward (pre-)hook: a start time counts negative, an end time positive."""
    sync(next(iter(module.buffers())).device)
    record.append(sign * time.perf_counter())


def training_step_benchmark(step_size, repeat, device):
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    cfg = Config.fromfile(osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                                   'configs', 'deeplabv3_cals_cityscapes.py'))
    height, width = step_size
    model_cfg = cfg.model
    model_cfg.pretrained = None
    model_cfg.backbone.depth = 18
    model_cfg.backbone.norm_cfg = {'type': 'BN', 'requires_grad': True}
    model_cfg.decode_head.update(in_channels=512, channels=128,
                                 norm_cfg={'type': 'BN', 'requires_grad': True})
    model_cfg.auxiliary_head.update(in_channels=256, channels=64,
                                    norm_cfg={'type': 'BN', 'requires_grad': True})
    model_cfg.data_preprocessor.size = (height, width)
    ce_cfg = model_cfg.copy()
    ce_cfg.decode_head = dict(model_cfg.decode_head, loss_decode=model_cfg.decode_head
                              .loss_decode[:1])
    ce_cfg.auxiliary_head = dict(model_cfg.auxiliary_head, loss_decode=model_cfg
                                 .auxiliary_head.loss_decode[:1])

    torch.manual_seed(0)
    num = 2
    inputs = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8) for _ in range(num)]
    samples = []
    for _ in range(num):
        sample = SegDataSample()
        label = torch.randint(0, 19, (1, height, width))
        sample.gt_sem_seg = PixelData(data=label)
        sample.set_metainfo({'img_shape': (height, width), 'ori_shape': (height, width),
                                 'pad_shape': (height, width)})
        samples.append(sample)
    data = {'inputs': inputs, 'data_samples': samples}

    steps = {}
    cals_seconds = []
    for name, mcfg in (('CE', ce_cfg), ('CE + CALS', model_cfg)):
        torch.manual_seed(0)
        model = MODELS.build(mcfg).to(device)
        model.train()
        optim = build_optim_wrapper(model, {'type': 'OptimWrapper', 'optimizer': {
            'type': 'SGD', 'lr': 1e-3, 'momentum': 0.9}})
        steps[name] = functools.partial(model.train_step, data, optim)
        for module in model.modules():
            if isinstance(module, CALSLoss):  # its forward computes the gradient too
                module.register_forward_pre_hook(functools.partial(clock, cals_seconds, -1))
                module.register_forward_hook(functools.partial(clock, cals_seconds, 1))
    times = interleaved_medians(steps, device, repeat)
    cals_calls = 2 * (repeat + 1)  # two CALS heads per step, warm-up round included
    own = sum(cals_seconds) / cals_calls * 2
    share = times['CE + CALS'] / times['CE'] - 1
    print(f'\nDeepLabV3-R18-D8 training step, batch {num}, {height}x{width}, {device}, median '
          f'of {repeat}:')
    print(f'  CE {times["CE"]:.3f} s, CE + CALS (decode + auxiliary) '
          f'{times["CE + CALS"]:.3f} s: difference {100 * share:+.1f}% (noisy on a shared '
          'machine)')
    print(f'  CALSLoss itself (both heads, forward with its gradient) {own * 1000:.1f} ms per '
          f'step = {100 * own / times["CE"]:.1f}% of the CE step (target <= 5%)')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size', type=int, nargs=4, default=(2, 19, 512, 1024))
    parser.add_argument('--step-size', type=int, nargs=2, default=(128, 256))
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, '
          f'OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}')
    loss_benchmark(args.size, args.repeat, device)
    statistics_benchmark(args.size, args.repeat, device)
    if device.type == 'cpu':
        cpu_paths_benchmark(args.size, args.repeat, device)
    training_step_benchmark(args.step_size, args.repeat, device)


if __name__ == '__main__':
    main()
