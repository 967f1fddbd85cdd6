"""The logic of ``tools/analysis/reliability_diagram.py``: redraw the reliability diagram (and
optionally the confidence histogram) of a saved evaluation. The command line is documented
there.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

from .plots import save_confidence_histogram, save_reliability_diagram
from .results import load_calibration


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


def main(argv=None) -> int:
    """Run the tool; returns its exit code (2 and one line on stderr for bad input)."""
    args = parse_args(argv)
    try:
        summary = load_calibration(args.results, args.index)
    except (FileNotFoundError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    out = args.out or osp.splitext(args.results)[0] + '_reliability.png'
    save_reliability_diagram(summary, out, args.title)
    print(f'reliability diagram: {out}')
    if args.histogram:
        save_confidence_histogram(summary, args.histogram)
        print(f'confidence histogram: {args.histogram}')
    return 0
