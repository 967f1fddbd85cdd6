"""CALS's final multipliers per class next to the class pixel shares of the training images.

    python tools/experiments/camvid_lambda_table.py NAME=HISTORY [NAME=HISTORY ...]
        [--camvid-root DIR] [--split-list train.txt] [--exclude-sequences 0006R0 ...]
        [--head decode_head]

HISTORY is a ``cals_history.json`` written by :class:`mmcals.hooks.CALSHook`; the λ of its
last update of ``--head`` is shown, with the number of updates and the pixels of that update.
Pixel shares are counted from the label PNGs of the training images (the split list minus
the excluded driving sequences), over the labelled pixels (Unlabelled, 11, left out). Prints
a markdown table. ``--camvid-root`` defaults to ``$CAMVID_ROOT``, else ``data/camvid``.

The logic lives in :mod:`mmcals.evaluation.lambda_table`.
"""
from mmcals.evaluation.lambda_table import main

if __name__ == '__main__':
    main()
