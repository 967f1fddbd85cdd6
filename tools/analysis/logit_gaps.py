"""Measure a trained model's logit gaps per class, to choose CALS's margin (docs/method.md §5).

    python tools/analysis/logit_gaps.py CONFIG CHECKPOINT [--split val|test|train]
        [--quantiles 0.5 0.9 0.99] [--margins 5 10 20] [--out-dir DIR] [--work-dir DIR]
        [--trust-checkpoint] [--allow-partial] [--log-level LEVEL]
        [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm]

Runs the model over the split's dataset (default: the val loader's) through mmengine's test
loop, with ``LogitGapMetric`` as the evaluator: a progress bar, fixed memory however large
the dataset, and ``--launcher`` for many GPUs (tools/dist_run.sh). Writes ``logit_gaps.json``
and ``logit_gaps.png`` into ``--out-dir`` (default: ``<work_dir>/<timestamp>/logit_gaps/``)
and prints, per class and over all pairs (pixel, class k != winner), the gap at each quantile
(the margin that a share 1 - q of the pairs would exceed) and the share of pairs above each
candidate margin. Measure on a calibration split, never on the split you report. The
checkpoint is loaded as by tools/test.py: without running code from it unless
``--trust-checkpoint``, and it must fit the model unless ``--allow-partial``.
"""
import argparse

import mmcals  # noqa: F401  (registers mmcals' modules, enables mmcals::)
from mmcals import cli
from mmcals.evaluation.logit_gaps import (
    DEFAULT_MARGINS,
    DEFAULT_QUANTILES,
    SPLITS,
    check_margins,
    check_quantiles,
    configure_logit_gaps,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Histogram a trained model's logit gaps")
    parser.add_argument('config', help='the config the model was trained with')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--split', choices=SPLITS, default='val',
                        help='whose dataloader to measure (default: val)')
    parser.add_argument('--quantiles', type=float, nargs='+', default=list(DEFAULT_QUANTILES),
                        help='gap quantiles to report, in [0, 1] (default: 0.5 0.9 0.99)')
    parser.add_argument('--margins', type=float, nargs='+', default=list(DEFAULT_MARGINS),
                        help='candidate margins whose share of constrained pairs to report '
                             '(default: 5 10 20)')
    parser.add_argument('--out-dir', help='where to write logit_gaps.json and .png')
    cli.add_common_arguments(parser)
    return parser.parse_args(argv)


def main():
    args = parse_args()
    try:
        check_quantiles(args.quantiles)
        check_margins(args.margins)
    except ValueError as error:
        raise cli.UsageError(f'--{error}') from None
    cfg = cli.load_test_config(args, script='analysis/logit_gaps.py')
    try:
        configure_logit_gaps(cfg, args.split, args.quantiles, args.margins, args.out_dir)
    except ValueError as error:
        raise cli.UsageError(f'{args.config}: {error}') from None
    cli.run_test_loop(cfg, args)


if __name__ == '__main__':
    cli.run_tool(main)
