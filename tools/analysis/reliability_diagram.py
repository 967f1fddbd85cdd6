"""Redraw the reliability diagram (and optionally the confidence histogram) from saved results.

    python tools/analysis/reliability_diagram.py RESULTS [--out PNG] [--histogram PNG]
                                                 [--index I] [--title TITLE]

RESULTS is a ``calibration.json`` written by PixelCalibrationMetric, or its
``calibration_history.jsonl`` (one evaluation per line; ``--index`` picks one, default the
last). The diagram goes to ``--out``, default ``<RESULTS without extension>_reliability.png``.

The logic lives in :mod:`mmcals.evaluation.reliability_diagram`.
"""
import sys

from mmcals.evaluation.reliability_diagram import main

if __name__ == '__main__':
    sys.exit(main())
