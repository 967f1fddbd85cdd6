"""One command that checks mmcals on an accelerator and prints one summary table.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--work-dir DIR] [--small]

On CUDA (the default when available):

1. trains the tiny CALS config (``tests/configs/deeplabv3_tiny_cals_cityscapes.py``, on a
   generated Cityscapes-layout dataset) for 4 iterations through ``tools/train.py --amp``,
   once with float16 and once with bfloat16 (mmengine's ``AmpOptimWrapper``), and checks that
   every logged loss is finite and that the CALS multipliers λ were updated;
2. compares ``CALSLoss`` value and gradient on the device (float32, float16 and bfloat16
   logits) with the float64 CPU computation on the same (rounded) values;
3. compares the calibration statistics (:class:`mmcals.evaluation.CalibrationStats`) on the
   device (float32, float16, bfloat16 logits) with the float64 CPU computation;
4. runs the measurements of ``bench_cals_loss.py`` (CALS vs cross-entropy) and
   ``bench_calibration_metric.py`` (PixelCalibrationMetric vs IoUMetric and torchmetrics) on
   the device, with CUDA-synchronised timing and the peak memory of CUDA's allocator.

``--device cpu`` runs the same checks at small sizes (it is part of the test suite, so the
script cannot rot); what needs CUDA (AMP training) is reported as SKIP with the reason.
Exit status 1 when a check fails.

Tolerances (relative to the float64 CPU value; ``ε`` is the unit roundoff of float32):

- CALSLoss: the kernel works in float32 whatever the input's precision, so the value and
  the gradient must agree to ``1e-4`` relative (loss) and ``1e-4 · max |g|`` (gradient):
  a float32 sum over ``n`` pixels errs by about ``ε · log2 n`` (``1e-6`` here), with margin
  for the GPU's different summation order and fused multiply-adds. A float16/bfloat16
  input gets its gradient in that dtype, so its rounding (``u |g|``, ``u = 2^-11`` or
  ``2^-8``) is allowed on top.
- Calibration metrics (percent): ``2e-3`` points for ECE, MCE, CECE, NLL, Brier, confidence
  and accuracy. Probabilities carry a float32 error of about ``1e-6``; a pixel whose
  confidence lies within that of a bin edge may change bin, which moves ECE by at most its
  share of pixels (``~1e-6 · 2B``) times the bin's gap. aECE: within its reported bound plus
  the same ``2e-3``.
"""
import argparse
import contextlib
import glob
import io
import json
import math
import os
import os.path as osp
import re
import subprocess
import sys
import tempfile
import time

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, osp.join(REPO, 'benchmarks'))

import mmcals  # noqa: E402,F401  (registers CALSLoss and the metric)
from mmcals.evaluation import CalibrationStats  # noqa: E402
from mmcals.losses import CALSLoss  # noqa: E402

TINY_CONFIG = osp.join(REPO, 'tests', 'configs', 'deeplabv3_tiny_cals_cityscapes.py')
LOSS_RTOL = 1e-4
METRIC_ATOL = 2e-3  # percentage points
METRIC_KEYS = ('ECE', 'MCE', 'CECE', 'NLL', 'Brier', 'mean_confidence', 'pixel_accuracy')


class Table:
    """Rows of (check, status, detail); ``failed`` when any status is FAIL."""

    def __init__(self):
        self.rows = []

    def add(self, check: str, status: str, detail: str) -> None:
        self.rows.append((check, status, detail))
        print(f'[{status}] {check}: {detail}', flush=True)

    @property
    def failed(self) -> bool:
        return any(status == 'FAIL' for _, status, _ in self.rows)

    def render(self, title: str) -> str:
        width = max(len(check) for check, _, _ in self.rows)
        lines = [title, f'{"check":{width}s}  status  detail', '-' * (width + 60)]
        lines += [f'{check:{width}s}  {status:6s}  {detail}' for check, status, detail in self.rows]
        return '\n'.join(lines)


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


# 1. AMP training -----------------------------------------------------------------------------
def check_amp_training(table: Table, device: torch.device, work_dir: str) -> None:
    if device.type != 'cuda':
        for dtype in ('float16', 'bfloat16'):
            table.add(f'train tiny CALS config, --amp {dtype}', 'SKIP',
                      'needs CUDA: mmengine\'s AmpOptimWrapper (tools/train.py --amp) refuses '
                      'a CPU-only machine')
        return
    sys.path.insert(0, osp.join(REPO, 'tests'))
    from tiny_data import make_cityscapes
    data_root = make_cityscapes(osp.join(work_dir, 'cityscapes'))
    for dtype in ('float16', 'bfloat16'):
        run_dir = osp.join(work_dir, f'train_{dtype}')
        options = [f'{key}.dataset.data_root={data_root}'
                   for key in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
        # A margin the first logits violate and λ away from its floor: λ moves at once.
        options += [f'model.{head}.loss_decode.1.{key}'
                    for head in ('decode_head', 'auxiliary_head')
                    for key in ('margin=0.05', 'lambda_init=0.5', 'rho_interval=1')]
        options.append(f'optim_wrapper.dtype={dtype}')
        start = time.perf_counter()
        done = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'train.py'), TINY_CONFIG,
                               '--amp', '--work-dir', run_dir, '--cfg-options', *options],
                              capture_output=True, text=True, cwd=REPO, check=False)
        seconds = time.perf_counter() - start
        name = f'train tiny CALS config, --amp {dtype}'
        if done.returncode:
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            table.add(name, 'FAIL', f'exit {done.returncode}: ' + ' | '.join(tail))
            continue
        paths = glob.glob(osp.join(run_dir, '*', 'vis_data', 'scalars.json'))
        records = []
        for path in paths:
            with open(path) as f:
                records += [json.loads(line) for line in f]
        losses = [v for r in records for k, v in r.items() if k.startswith('loss') or
                  k.endswith('.loss_ce') or k.endswith('.loss_cals')]
        lambdas = [v for r in records for k, v in r.items() if k.endswith('/lambda_mean')]
        finite = bool(losses) and all(math.isfinite(v) for v in losses)
        # λ starts at 0.5 for every class: an update leaves some other mean.
        moved = bool(lambdas) and any(abs(v - 0.5) > 1e-9 for v in lambdas)
        table.add(name, 'PASS' if finite and moved else 'FAIL',
                  f'{len(losses)} loss values, all finite: {finite}; λ means logged '
                  f'{[round(v, 4) for v in lambdas]} (init 0.5), updated: {moved}; '
                  f'{seconds:.0f} s')


# 2. CALSLoss on the device --------------------------------------------------------------------
def loss_and_grad(logits: torch.Tensor, labels: torch.Tensor, num_classes: int):
    loss = CALSLoss(num_classes, margin=2.0, lambda_init=0.5).to(logits.device)
    logits = logits.detach().clone().requires_grad_()
    value = loss(logits, labels)
    value.backward()
    return float(value), logits.grad.double().cpu()


def check_loss(table: Table, device: torch.device, size: tuple) -> None:
    num, num_classes, height, width = size
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(size, generator=gen) * 3
    labels = torch.randint(0, num_classes, (num, height, width), generator=gen)
    labels[:, :2] = 255
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        name = f'CALSLoss value+grad, {str(dtype)[6:]} logits on {device.type}'
        rounded = base.to(dtype)
        ref_value, ref_grad = loss_and_grad(rounded.double(), labels, num_classes)
        value, grad = loss_and_grad(rounded.to(device), labels.to(device), num_classes)
        value_err = abs(value - ref_value) / max(abs(ref_value), 1e-30)
        # The gradient comes back in the input's dtype: its rounding to that dtype (unit
        # roundoff u) is allowed on top of the float32 tolerance.
        u = 0.0 if dtype == torch.float32 else torch.finfo(dtype).eps / 2
        scale = max(float(ref_grad.abs().max()), 1e-30)
        grad_err = float(((grad - ref_grad).abs() - u * ref_grad.abs()).max()) / scale
        ok = value_err <= LOSS_RTOL and grad_err <= LOSS_RTOL and math.isfinite(value)
        table.add(name, 'PASS' if ok else 'FAIL',
                  f'loss rel err {value_err:.1e}, grad err beyond rounding to {str(dtype)[6:]} '
                  f'{max(grad_err, 0):.1e} x max|g| (tol {LOSS_RTOL:g}); float64 CPU value '
                  f'{ref_value:.6g}')


# 3. Calibration statistics on the device -----------------------------------------------------
def seglike(num_classes: int, height: int, width: int, seed: int):
    """Logits like a segmentation model's (the metric benchmark's): margin 0..12 on one
    class, the label 85% of the time; the bottom tenth of the rows ignored."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_classes, height, width, generator=gen)
    labels = torch.randint(0, num_classes, (height, width), generator=gen)
    other = torch.randint(0, num_classes, (height, width), generator=gen)
    favoured = torch.where(torch.rand(height, width, generator=gen) < 0.15, other, labels)
    logits.scatter_add_(0, favoured[None], torch.rand(1, height, width, generator=gen) * 12)
    labels[-max(1, height // 10):] = 255
    return logits, labels


def check_stats(table: Table, device: torch.device, size: tuple) -> None:
    num_classes, height, width = size
    logits, labels = seglike(num_classes, height, width, seed=1)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        name = f'calibration stats, {str(dtype)[6:]} logits on {device.type}'
        rounded = logits.to(dtype)
        ref = CalibrationStats(num_classes)
        ref.update(rounded.double(), labels)
        ref = ref.summary()
        stats = CalibrationStats(num_classes, device=device)
        stats.update(rounded.to(device), labels.to(device))
        got = stats.summary()
        errors = {k: abs(got['metrics'][k] - ref['metrics'][k]) for k in METRIC_KEYS}
        worst = max(errors, key=errors.get)
        aece_err = abs(got['metrics']['aECE'] - ref['metrics']['aECE'])
        aece_tol = got['aECE_error_bound'] + METRIC_ATOL
        ok = (errors[worst] <= METRIC_ATOL and aece_err <= aece_tol
              and got['num_pixels'] == ref['num_pixels'])
        table.add(name, 'PASS' if ok else 'FAIL',
                  f'{got["num_pixels"]} pixels; worst |diff| {errors[worst]:.1e} points '
                  f'({worst}; tol {METRIC_ATOL:g}); aECE |diff| {aece_err:.1e} (tol bound + '
                  f'{METRIC_ATOL:g} = {aece_tol:.1e}); ECE {got["metrics"]["ECE"]:.3f}%')


# 4. Benchmarks ----------------------------------------------------------------------------------
def bench_loss(table: Table, device: torch.device, size: tuple, step_size: tuple,
               repeat: int) -> None:
    import bench_cals_loss
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench_cals_loss.loss_benchmark(size, repeat, device)
        bench_cals_loss.training_step_benchmark(step_size, repeat, device)
    text = out.getvalue()
    own = re.search(r'CALS own fwd\+bwd = ([0-9.]+)x CE', text)
    peak = re.search(r'extra peak over CE = ([-0-9.]+) logits', text)
    share = re.search(r'= ([-0-9.]+)% of the CE step', text)
    if not (own and peak and share):
        table.add('bench_cals_loss', 'FAIL', 'could not read its summary lines:\n' + text)
        return
    table.add(f'bench_cals_loss {tuple(size)} on {device.type}', 'INFO',
              f'CALS own fwd+bwd = {own[1]}x CE (target <= 1.5); extra peak over CE = '
              f'{peak[1]} logits tensors (target <= 1); CALSLoss = {share[1]}% of a '
              f'{step_size[0]}x{step_size[1]} training step (target <= 5)')


def bench_metric(table: Table, device: torch.device, images: int, size: tuple,
                 classes: int) -> None:
    import bench_calibration_metric as bench
    results = {}
    for method in bench.METHODS:
        args = argparse.Namespace(images=images, size=size, classes=classes, logits='seglike',
                                  worker=method, threads=torch.get_num_threads(),
                                  device=str(device))
        results[method] = bench.run_worker(args)
    ours, top = results['ours_all'], results['ours_top_label']
    iou, tm = results['iou'], results['torchmetrics']
    peak_unit = 'MiB from CUDA\'s allocator' if device.type == 'cuda' else 'MiB max RSS growth'
    table.add(f'bench_calibration_metric {images}x{classes}x{size[0]}x{size[1]} on '
              f'{device.type}', 'INFO',
              f'all metrics / IoUMetric = {ours["median"] / iou["median"]:.2f} (target <= 1.5); '
              f'top-label only / IoUMetric = {top["median"] / iou["median"]:.2f} (target <= '
              f'1.0); all metrics / torchmetrics = {ours["median"] / tm["median"]:.2f}; '
              f'peak {ours["peak_mib"]:.0f}/{top["peak_mib"]:.0f}/{iou["peak_mib"]:.0f}/'
              f'{tm["peak_mib"]:.0f} {peak_unit} (all/top/IoU/torchmetrics); state '
              f'{ours["state_bytes"] / 1e6:.3f} MB')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--work-dir', help='where the AMP trainings write (default: a '
                        'temporary folder, removed afterwards)')
    parser.add_argument('--small', action='store_true',
                        help='small sizes (the default on CPU)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        sys.exit('gpu_check: --device cuda but torch.cuda.is_available() is False: run on a '
                 'CUDA machine with a CUDA build of torch, or pass --device cpu')
    small = args.small or device.type == 'cpu'
    table = Table()
    what = (torch.cuda.get_device_name(device) if device.type == 'cuda'
            else f'CPU, torch threads: {torch.get_num_threads()}')
    print(f'gpu_check: torch {torch.__version__}, {what}, {"small" if small else "full"} sizes',
          flush=True)
    with contextlib.ExitStack() as stack:
        work_dir = args.work_dir or stack.enter_context(tempfile.TemporaryDirectory())
        os.makedirs(work_dir, exist_ok=True)
        check_amp_training(table, device, work_dir)
        check_loss(table, device, (2, 19, 16, 32) if small else (2, 19, 256, 512))
        check_stats(table, device, (19, 32, 64) if small else (19, 512, 1024))
        if small:
            bench_loss(table, device, (1, 19, 32, 64), (32, 64), repeat=1)
            bench_metric(table, device, images=2, size=(32, 64), classes=19)
        else:
            bench_loss(table, device, (2, 19, 512, 1024), (512, 1024), repeat=5)
            bench_metric(table, device, images=20, size=(1024, 2048), classes=19)
    print('\n' + table.render(f'gpu_check summary ({what}; torch {torch.__version__})'))
    if small:
        print('(small sizes: the benchmark ratios measure per-call overhead, not the targets; '
              'run the benchmarks themselves for those)')
    return 1 if table.failed else 0


if __name__ == '__main__':
    sys.exit(main())
