"""Redraw the reliability diagram (and optionally the confidence histogram) from saved results.

    python tools/analysis/reliability_diagram.py RESULTS [--out PNG] [--histogram PNG]
                                                 [--index I] [--title TITLE]

RESULTS is a ``calibration.json`` written by PixelCalibrationMetric, or its
``calibration_history.jsonl`` (one evaluation per line; ``--index`` picks one, default the
last). The diagram goes to ``--out``, default ``<RESULTS without extension>_reliability.png``.
"""
import argparse
import json
import os.path as osp
import sys

from mmcals.evaluation.plots import (
    save_confidence_histogram,
    save_reliability_diagram,
)

REQUIRED_KEYS = ('metrics', 'reliability', 'num_pixels')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Redraw a reliability diagram from a saved '
                                     'calibration.json or calibration_history.jsonl')
    parser.add_argument('results', help='calibration.json or calibration_history.jsonl')
    parser.add_argument('--out', help='PNG for the reliability diagram '
                        '(default: <results>_reliability.png)')
    parser.add_argument('--histogram', help='also write the confidence histogram to this PNG')
    parser.add_argument('--index', type=int, default=-1,
                        help='which line of a .jsonl history to draw (default: -1, the last)')
    parser.add_argument('--title', help='title of the diagram (default: with the ECE)')
    return parser.parse_args(argv)


def load_summary(path: str, index: int = -1) -> dict:
    """One evaluation's dict from a calibration.json or a calibration_history.jsonl."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'results file {path} does not exist')
    with open(path) as f:
        if path.endswith('.jsonl'):
            lines = [line for line in f if line.strip()]
            if not lines:
                raise ValueError(f'{path} holds no evaluation')
            try:
                text = lines[index]
            except IndexError:
                raise ValueError(f'--index {index} is out of range: {path} holds '
                                 f'{len(lines)} evaluations') from None
            summary = json.loads(text)
        else:
            summary = json.load(f)
    missing = [key for key in REQUIRED_KEYS if key not in summary]
    if missing:
        raise ValueError(f'{path} is not a PixelCalibrationMetric result (missing '
                         f'{", ".join(missing)})')
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = load_summary(args.results, args.index)
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    out = args.out or osp.splitext(args.results)[0] + '_reliability.png'
    save_reliability_diagram(summary, out, args.title)
    print(f'reliability diagram: {out}')
    if args.histogram:
        save_confidence_histogram(summary, args.histogram)
        print(f'confidence histogram: {args.histogram}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
