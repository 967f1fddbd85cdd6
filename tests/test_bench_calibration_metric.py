"""benchmarks/bench_calibration_metric.py end to end at a tiny size: its worker processes take
turns on one stream of images and it prints the ratio lines of its targets."""
import os.path as osp
import re

from tooling import REPO, run_tool

SCRIPT = osp.join(REPO, 'benchmarks', 'bench_calibration_metric.py')


def test_interleaved_workers_measure_the_same_images_and_print_the_ratios():
    done = run_tool(SCRIPT, '--images', '3', '--size', '24', '40', '--classes', '5',
                    '--threads', '1', timeout=300, env={'OMP_NUM_THREADS': '1'})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    ratios = re.search(r'all metrics / IoUMetric = ([0-9.]+) .*top-label only / IoUMetric = '
                       r'([0-9.]+)', output)
    assert ratios, output[-3000:]
    assert all(float(value) > 0 for value in ratios.groups())
    for name in ('all metrics', 'top-label only'):
        assert re.search(rf'{name} / IoUMetric image by image .*: median [0-9.]+, range', output)
    # Every worker saw the same images: torchmetrics' own state, recomputed in float64, gives
    # our ECE (the two binnings differ only for confidences exactly on a bin edge), and the
    # two modes of PixelCalibrationMetric agree on it.
    recomputed = re.search(r'recomputed in float64 from its own state: ([0-9.]+) \(it reports '
                           r'[0-9.]+; ours ([0-9.]+)\)', output)
    assert recomputed, output[-3000:]
    assert abs(float(recomputed[1]) - float(recomputed[2])) < 1e-3
    rows = {name: line.split() for name in ('(all)', '(top_label_only)')
            for line in output.splitlines() if line.startswith('PixelCalibrationMetric ' + name)}
    assert rows['(all)'][-1] == rows['(top_label_only)'][-1]
