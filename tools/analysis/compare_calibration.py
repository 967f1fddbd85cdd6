"""Put the saved evaluations of several runs side by side: a markdown table and one PNG.

    python tools/analysis/compare_calibration.py WORK_DIR [WORK_DIR ...] [--out-dir DIR]
                                                 [--names NAME ...] [--per-class [CLASS ...]]

For each work dir, the newest ``calibration.json`` below it (written by PixelCalibrationMetric
at every evaluation, or by tools/analysis/temperature_scaling.py) gives ECE, aECE, CECE, NLL
and Brier; mIoU comes from the newest result file of the same run that holds one: mmengine's
``vis_data/scalars.json`` (validation during training), ``<timestamp>/<timestamp>.json``
(tools/test.py) or ``temperature_scaling.json``; '-' and a note when there is none.

Writes ``comparison.md`` (method, mIoU, ECE, aECE, CECE, NLL, Brier in percent; the best of
each column in bold: highest mIoU, lowest for the rest) and ``reliability_comparison.png``
(the runs' reliability curves overlaid) into ``--out-dir`` (default
``work_dirs/calibration_comparison``), and prints the table. Method names default to the
work dirs' base names.

Seeds: work dirs that share a name (the same ``--names`` entry, or the same base name) are
one method, e.g. ``--names CE CE CALS CALS`` for two seeds each. Its row shows, per column,
the mean over its runs ± the spread, half the range (max - min) / 2, and the run count next
to the name; the bold mark goes to the best mean. Its reliability curve pools the runs'
bins: per bin, counts are summed and confidence and accuracy are count-weighted means. A
method whose runs do not all hold a value of a column shows '-' there.

Per class (``--per-class``): two columns per chosen class, ``ECE_k <class>`` (the top-label
ECE of the pixels labelled k) and ``CECE_k <class>`` (class k's term of CECE, whose mean over
the classes is CECE; docs/method.md §4), read from the per-class table of each
``calibration.json``, with mean ± spread and bold as for the other columns. Give class names
(``--per-class Pedestrian Bicyclist``), one number N for the N classes with the fewest
ground-truth pixels (``--per-class 3``; a number that is also a class name means that class),
or nothing for the 3 rarest: where class-adaptive calibration should show. An unknown class
name stops the tool with the list of the runs' classes.

Runs must have been evaluated on the same data: the class names and the number of evaluated
pixels in their ``calibration.json`` must agree, or the tool stops and names both runs.

The logic lives in :mod:`mmcals.evaluation.comparison`.
"""
from mmcals.cli import run_tool
from mmcals.evaluation.comparison import main

if __name__ == '__main__':
    run_tool(main)
