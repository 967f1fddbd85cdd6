"""Tables and figures of the CamVid study from its committed results alone.

    python tools/experiments/camvid_report.py RESULTS [--seeds 0 1 2] [--camvid-root DIR]
        [--exclude-sequences 0006R0] [--out-dir RESULTS/report]

RESULTS holds one folder per finished run, as tools/experiments/camvid_study.sh writes them
(``<method>_s<seed>/`` with ``calibration.json``, ``test_metrics.json``, ``train_scalars.json``,
``wall_time.json`` and, for CALS, ``cals_history.json``; ``ce_ts_s<seed>/`` with
``temperature_scaling.json``; ``margin/margin.json``). Runs that are missing are left out and
listed. Writes into ``--out-dir``: ``comparison.md`` and ``reliability_comparison.png`` (one
row per method, mean ± half the range over seeds), ``comparison_runs.md`` (one row per run),
``versus_ce.md`` (each method's difference to CE, marked where it lies inside CE's seed
spread), ``confidence.md`` (each run's mean confidence against its pixel accuracy),
``lambda_table.md``, ``convergence.png`` / ``convergence.md`` (the CE runs' training
loss and calibration-part mIoU), ``cals_diagnostics.png`` (λ and the acting share per class over
the updates of each CALS run) and ``wall_times.md``.

The logic lives in :mod:`mmcals.evaluation.study_report`.
"""
from mmcals.cli import run_tool
from mmcals.evaluation.study_report import main

if __name__ == '__main__':
    run_tool(main)
