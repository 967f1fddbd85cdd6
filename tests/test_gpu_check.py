"""benchmarks/gpu_check.py runs on the CPU at small sizes, so that it cannot rot."""
import os.path as osp

from tooling import REPO, run_tool

SCRIPT = osp.join(REPO, 'benchmarks', 'gpu_check.py')


def test_gpu_check_runs_on_cpu_and_prints_one_table(tmp_path):
    done = run_tool(SCRIPT, '--device', 'cpu', '--work-dir', tmp_path, timeout=600,
                    env={'OMP_NUM_THREADS': '1', 'CUDA_VISIBLE_DEVICES': ''})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    table = output[output.index('gpu_check summary'):].splitlines()
    rows = {line.split('  ')[0].strip(): line for line in table[3:] if line.strip()}
    for dtype in ('float16', 'bfloat16'):
        # What needs CUDA is reported, with the reason, not left out.
        row = rows[f'train tiny CALS config, --amp {dtype}']
        assert ' SKIP ' in row and 'needs CUDA' in row
    for dtype in ('float32', 'float16', 'bfloat16'):
        assert ' PASS ' in rows[f'CALSLoss value+grad, {dtype} logits on cpu']
        assert ' PASS ' in rows[f'calibration stats, {dtype} logits on cpu']
    loss_row = next(line for name, line in rows.items() if name.startswith('bench_cals_loss'))
    assert 'CALS own fwd+bwd = ' in loss_row and 'logits tensors' in loss_row
    metric_row = next(line for name, line in rows.items()
                      if name.startswith('bench_calibration_metric'))
    assert 'all metrics / IoUMetric = ' in metric_row
    assert 'top-label only / IoUMetric = ' in metric_row
    assert not any(' FAIL ' in line for line in table)
