"""The logic of ``tools/experiments/camvid_lambda_table.py``: CALS's final multipliers per class
next to the class pixel shares of the CamVid training images. The command line is documented
there.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys

import numpy as np
from PIL import Image

from ..datasets.camvid import UNLABELLED, read_split_list, sequence_of


def class_pixel_shares(root: str, split_list: str, exclude: list[str],
                       num_classes: int) -> tuple[np.ndarray, int]:
    """Percent of labelled pixels per class over the listed label images, and the image count."""
    counts = np.zeros(num_classes + 1, dtype=np.int64)
    images = 0
    for image, label in read_split_list(osp.join(root, split_list), root):
        if sequence_of(image) in exclude:
            continue
        labels = np.asarray(Image.open(label))
        counts += np.bincount(labels.ravel(), minlength=num_classes + 1)[:num_classes + 1]
        images += 1
    if images == 0:
        raise ValueError(f'{split_list} lists no image outside sequences {exclude}')
    labelled = counts[:UNLABELLED]
    return 100.0 * labelled / labelled.sum(), images


def final_lambda(path: str, head: str) -> tuple[list[str], list[float], dict]:
    with open(path) as f:
        history = json.load(f)
    entries = history['losses'].get(head)
    if not entries:
        raise ValueError(f'{path} holds no updates of {head!r}; heads: '
                         f'{sorted(history["losses"])}')
    return history['classes'], entries[-1]['lambda'], {
        'source': history['source'], 'updates': entries[-1]['update'],
        'pixels': entries[-1]['pixels'], 'rho_max': max(entries[-1]['rho'])}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('histories', nargs='+', metavar='NAME=HISTORY')
    parser.add_argument('--camvid-root', default=os.environ.get('CAMVID_ROOT', 'data/camvid'),
                        help='CamVid folder (default: $CAMVID_ROOT, else data/camvid)')
    parser.add_argument('--split-list', default='train.txt')
    parser.add_argument('--exclude-sequences', nargs='*', default=[])
    parser.add_argument('--head', default='decode_head')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    runs = []
    for item in args.histories:
        name, sep, path = item.rpartition('=')  # a name may hold '=', a path rarely
        if not sep:
            raise SystemExit(f'error: {item!r} is not NAME=HISTORY')
        if not osp.isfile(path):
            print(f'note: {path} does not exist; {name} left out', file=sys.stderr)
            continue
        runs.append((name, *final_lambda(path, args.head)))
    if not runs:
        raise SystemExit('error: none of the histories exists')
    classes = runs[0][1]
    shares, images = class_pixel_shares(args.camvid_root, args.split_list,
                                        args.exclude_sequences, len(classes))
    print(f'λ of {args.head} after the last update; pixel share over the labelled pixels of '
          f'the {images} training images ({args.split_list} without '
          f'{", ".join(args.exclude_sequences) or "nothing"}).\n')
    print('| class | pixel share % | ' + ' | '.join(name for name, *_ in runs) + ' |')
    print('| --- | ---: | ' + ' | '.join('---:' for _ in runs) + ' |')
    for k, cls in enumerate(classes):
        print(f'| {cls} | {shares[k]:.2f} | '
              + ' | '.join(f'{lam[k]:.3g}' for _, _, lam, _ in runs) + ' |')
    print()
    for name, _, _, info in runs:
        print(f"- {name}: source {info['source']}, {info['updates']} updates, last from "
              f"{info['pixels']} pixels, max ρ {info['rho_max']:.3g}")
