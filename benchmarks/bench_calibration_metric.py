"""Side by side on a stream of Cityscapes-sized images: per-image time, peak memory and state
size of PixelCalibrationMetric (all metrics, and top_label_only), mmseg's IoUMetric and
torchmetrics' MulticlassCalibrationError (top-label ECE only).

    python benchmarks/bench_calibration_metric.py [--images 20] [--size 1024 2048]
                                                  [--classes 19] [--logits seglike|randn]
                                                  [--threads 2] [--device cpu|cuda]

The defaults are the measurement of the targets (20 images of 19x1024x2048, 2 threads on
every side): the last lines print ``all metrics / IoUMetric`` (target <= 1.5) and
``top-label only / IoUMetric`` (target <= 1.0), by wall-clock time and by process CPU time.

Each metric runs in its own process, so that peak memory (ru_maxrss above the level reached
after the inputs were made; on CUDA the allocator's peak above what was allocated) is its
own. The processes take turns image by image (the order rotating from image to image), so
that a change in the machine's speed during the run, common on shared or virtual machines,
hits every metric alike instead of whichever ran at that moment. Time is wall-clock time
(CUDA-synchronised) of ``process`` (``update`` for torchmetrics) per image, on the logits
mmseg would hand over: a float32 ``(C, H, W)`` tensor, labels with 10% ignored pixels (the
bottom rows, like Cityscapes' ego vehicle) and, for IoUMetric, the argmax prediction made
beforehand (as the model does); making an image is not timed. State is the size of
what each metric holds after the last image, pickled (what mmengine would collect).

``--logits seglike`` (default): noise plus a margin of 0..12 on one class, which is the label
85% of the time: confidences spread over (0, 1] like a segmentation model's.
``--logits randn``: plain standard normal logits (confidence mostly < 0.5).
"""
import argparse
import json
import os
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

METHODS = ('ours_all', 'ours_top_label', 'iou', 'torchmetrics')
NAMES = {
    'ours_all': 'PixelCalibrationMetric (all)',
    'ours_top_label': 'PixelCalibrationMetric (top_label_only)',
    'iou': 'mmseg IoUMetric',
    'torchmetrics': 'torchmetrics MulticlassCalibrationError',
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=20)
    parser.add_argument('--size', type=int, nargs=2, default=(1024, 2048))
    parser.add_argument('--classes', type=int, default=19)
    parser.add_argument('--logits', choices=('seglike', 'randn'), default='seglike')
    parser.add_argument('--threads', type=int, default=2,
                        help='torch threads of every metric process (default: 2, the '
                        'issue\'s measurement); fixed so that both sides get the same')
    parser.add_argument('--device', default='cpu',
                        help='where the logits live, as mmseg hands them over (default: cpu)')
    parser.add_argument('--worker', choices=METHODS, help=argparse.SUPPRESS)
    return parser.parse_args()


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Stream:
    """Fills the same buffers with image after image, without allocating."""

    def __init__(self, args):
        self.args = args
        height, width = args.size
        device = getattr(args, 'device', 'cpu')
        self.logits = torch.empty(args.classes, height, width, device=device)
        self.labels = torch.empty(height, width, dtype=torch.int64, device=device)
        self.favoured = torch.empty(height, width, dtype=torch.int64, device=device)
        self.margin = torch.empty(height, width, device=device)
        self.other = torch.empty(height, width, dtype=torch.int64, device=device)
        self.mask = torch.empty(height, width, device=device)
        self.ignored = max(1, height // 10)

    def fill(self, index: int) -> None:
        g = torch.Generator(self.logits.device).manual_seed(index)
        num_classes = self.args.classes
        self.logits.normal_(generator=g)
        self.labels.random_(0, num_classes, generator=g)
        if self.args.logits == 'seglike':
            self.other.random_(0, num_classes, generator=g)
            self.mask.uniform_(generator=g)
            torch.where(self.mask < 0.15, self.other, self.labels, out=self.favoured)
            self.margin.uniform_(0, 12, generator=g)
            self.logits.scatter_add_(0, self.favoured[None], self.margin[None])
        self.labels[-self.ignored:] = 255


class Worker:
    """One metric on its own stream of images: ``step(index)`` times one image, ``finish()``
    gives the results."""

    def __init__(self, args):
        self.method = method = args.worker
        torch.set_num_threads(args.threads)
        self.device = device = torch.device(getattr(args, 'device', 'cpu'))
        self.cuda = device.type == 'cuda'
        self.stream = Stream(args)
        classes = [str(k) for k in range(args.classes)]
        self.pred = None
        if method.startswith('ours'):
            import mmcals  # noqa: F401  (registers the metric)
            from mmcals.evaluation import PixelCalibrationMetric
            self.metric = PixelCalibrationMetric(top_label_only=method == 'ours_top_label')
            self.metric.dataset_meta = dict(classes=classes)
        elif method == 'iou':
            from mmseg.evaluation import IoUMetric
            self.metric = IoUMetric()
            self.metric.dataset_meta = dict(classes=classes)
            self.pred = torch.empty(1, *args.size, dtype=torch.int64, device=device)
        else:
            from torchmetrics.classification import MulticlassCalibrationError
            self.metric = MulticlassCalibrationError(num_classes=args.classes, n_bins=15,
                                                     norm='l1', ignore_index=255).to(device)
        self._fill(0)
        if self.cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device)
        else:
            self.base = max_rss_mib()
        self.times, self.cpu_times = [], []

    def _fill(self, index: int) -> None:
        self.stream.fill(index)
        if self.pred is not None:
            torch.argmax(self.stream.logits, 0, keepdim=True, out=self.pred)

    def _sample(self) -> dict:
        data = dict(seg_logits=dict(data=self.stream.logits),
                    gt_sem_seg=dict(data=self.stream.labels[None]))
        if self.pred is not None:
            data['pred_sem_seg'] = dict(data=self.pred)
        return data

    def step(self, index: int) -> None:
        """Time image ``index`` (made first, untimed)."""
        if index:
            self._fill(index)
        if self.cuda:
            torch.cuda.synchronize(self.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        if self.method == 'torchmetrics':
            self.metric.update(self.stream.logits[None], self.stream.labels[None])
        else:
            self.metric.process({}, [self._sample()])
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter() - start)
        self.cpu_times.append(time.process_time() - cpu_start)

    def finish(self) -> dict:
        method, metric, times = self.method, self.metric, self.times
        if self.cuda:
            peak = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2 ** 20
        else:
            peak = max_rss_mib() - self.base
        if method == 'torchmetrics':
            state = len(pickle.dumps([metric.confidences, metric.accuracies]))
        else:
            state = len(pickle.dumps(metric.results))
        start = time.perf_counter()
        if method == 'torchmetrics':
            value = 100 * float(metric.compute())
        else:
            value = metric.evaluate(len(times)).get('ECE', float('nan'))
        compute = time.perf_counter() - start
        result = dict(method=method, mean=statistics.mean(times),
                      median=statistics.median(times), times=times,
                      cpu_median=statistics.median(self.cpu_times), first=times[0],
                      peak_mib=peak, state_bytes=state, compute_s=compute, ece=value,
                      threads=torch.get_num_threads())
        if method == 'torchmetrics':
            # torchmetrics sums the bins in float32: redo its computation on its own state in
            # float64 to show how much of a difference that makes at this scale.
            from torchmetrics.functional.classification.calibration_error import _ce_compute
            conf = torch.cat(metric.confidences).double()
            acc = torch.cat(metric.accuracies).double()
            result['ece_float64'] = 100 * float(_ce_compute(conf, acc, 15, norm='l1'))
        return result


def run_worker(args) -> dict:
    """All images of one metric in this process, one after the other."""
    worker = Worker(args)
    for index in range(args.images):
        worker.step(index)
    return worker.finish()


REPLY = '@bench-reply'


def serve(args) -> None:
    """Worker process: set up, then one line in, one line out (``step I`` or ``finish``)."""
    worker = Worker(args)
    print(REPLY, 'null', flush=True)  # ready
    for line in sys.stdin:
        command = line.split()
        if command[0] == 'step':
            worker.step(int(command[1]))
            print(REPLY, 'null', flush=True)  # done
        else:
            print(REPLY, json.dumps(worker.finish()), flush=True)
            return


def interleaved(args) -> dict:
    """One process per metric, all started first; then image by image, each metric in turn
    (the order rotating), so that a change of the machine's speed hits every metric alike."""
    workers, logs = {}, {}
    for method in METHODS:
        command = [sys.executable, __file__, '--worker', method, '--images', str(args.images),
                   '--size', *map(str, args.size), '--classes', str(args.classes),
                   '--logits', args.logits, '--threads', str(args.threads),
                   '--device', args.device]
        logs[method] = tempfile.TemporaryFile('w+')
        workers[method] = subprocess.Popen(command, stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=logs[method],
                                           text=True, bufsize=1)

    def reply(method: str):
        for line in workers[method].stdout:  # the libraries may print too: skip their lines
            if line.startswith(REPLY + ' '):
                return json.loads(line[len(REPLY) + 1:])
        workers[method].wait()
        logs[method].seek(0)
        sys.exit(f'{method} failed (exit code {workers[method].returncode}):\n'
                 f'{logs[method].read()[-3000:]}')

    try:
        for method in METHODS:
            reply(method)  # ready
        for index in range(args.images):
            shift = index % len(METHODS)
            for method in METHODS[shift:] + METHODS[:shift]:
                workers[method].stdin.write(f'step {index}\n')
                reply(method)
        results = {}
        for method in METHODS:
            workers[method].stdin.write('finish\n')
            results[method] = reply(method)
            workers[method].wait()
        return results
    finally:
        for method, worker in workers.items():
            if worker.poll() is None:
                worker.kill()
            logs[method].close()


def main():
    args = parse_args()
    if args.worker:
        serve(args)
        return
    load = os.getloadavg()
    results = interleaved(args)
    height, width = args.size
    print(f'{args.images} images, {args.classes}x{height}x{width} float32 logits '
          f'({args.logits}), torch threads {results["iou"]["threads"]}, load average '
          f'before {load[0]:.2f} after {os.getloadavg()[0]:.2f}')
    print(f'{"metric":42s} {"s/image":>8s} {"median":>8s} {"first":>8s} {"peak MiB":>9s} '
          f'{"state":>10s} {"compute s":>9s} {"ECE %":>7s}')
    for method in METHODS:
        r = results[method]
        print(f'{NAMES[method]:42s} {r["mean"]:8.3f} {r["median"]:8.3f} {r["first"]:8.3f} '
              f'{r["peak_mib"]:9.1f} {r["state_bytes"] / 1024:8.1f}KB {r["compute_s"]:9.3f} '
              f'{r["ece"]:7.3f}')
    ours, top = results['ours_all'], results['ours_top_label']
    iou, tm = results['iou'], results['torchmetrics']
    print(f'torchmetrics ECE recomputed in float64 from its own state: {tm["ece_float64"]:.3f}'
          f' (it reports {tm["ece"]:.3f}; ours {ours["ece"]:.3f})')
    print('ratios (per-image median time): '
          f'all metrics / IoUMetric = {ours["median"] / iou["median"]:.2f} (target <= 1.5); '
          f'top-label only / IoUMetric = {top["median"] / iou["median"]:.2f} (target <= 1.0); '
          f'all metrics / torchmetrics = {ours["median"] / tm["median"]:.2f}; '
          f'state after {args.images} images: {ours["state_bytes"] / 1e6:.3f} MB '
          '(target < 1 MB), torchmetrics '
          f'{tm["state_bytes"] / 2 ** 20:.0f} MiB')
    # The same image, one metric right after the other: the spread of these says how far
    # the machine's speed moved the ratio lines above.
    for name, r in (('all metrics', ours), ('top-label only', top)):
        each = sorted(a / b for a, b in zip(r['times'][1:], iou['times'][1:]))
        if each:
            print(f'{name} / IoUMetric image by image (first image left out): median '
                  f'{statistics.median(each):.2f}, range {each[0]:.2f}-{each[-1]:.2f}')
    # Process CPU time is what a busy machine blurs least; with --threads 1 it is also free
    # of OpenMP's spinning.
    print('ratios (per-image median CPU time of the process): '
          f'all metrics / IoUMetric = {ours["cpu_median"] / iou["cpu_median"]:.2f}; '
          f'top-label only / IoUMetric = {top["cpu_median"] / iou["cpu_median"]:.2f}')


if __name__ == '__main__':
    main()
