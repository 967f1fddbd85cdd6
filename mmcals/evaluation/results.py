"""The ``calibration.json`` format: its metric keys, one reader and one writer.

``calibration.json`` is the dict of :meth:`CalibrationStats.summary
<mmcals.evaluation.calibration_stats.CalibrationStats.summary>`, written by
:class:`~mmcals.evaluation.PixelCalibrationMetric` at every evaluation (with one line per
evaluation appended to ``calibration_history.jsonl``) and by
``tools/analysis/temperature_scaling.py``; the analysis tools read it back with
:func:`load_calibration`.
"""
from __future__ import annotations

import json
import os
import os.path as osp
import tempfile

# Every metric of docs/method.md §4, in the order tables show them (percent).
METRIC_KEYS = ('ECE', 'MCE', 'aECE', 'CECE', 'NLL', 'Brier', 'mean_confidence',
               'pixel_accuracy')
# The ones that need every class's probability of every pixel (not with top_label_only).
CLASS_WISE_KEYS = ('CECE', 'Brier')
# The columns a comparison of methods shows next to mIoU.
COMPARED_KEYS = ('ECE', 'aECE', 'CECE', 'NLL', 'Brier')
# What a reader needs in a calibration.json.
REQUIRED_KEYS = ('classes', 'num_pixels', 'metrics', 'reliability')


def load_calibration(path: str, index: int = -1) -> dict:
    """One evaluation's dict from a ``calibration.json`` or a ``calibration_history.jsonl``.

    Args:
        path (str): The file; a ``.jsonl`` history holds one evaluation per line.
        index (int): Which line of a history (default -1, the latest). Ignored for ``.json``.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: It is not valid JSON, holds no evaluation, ``index`` is out of range, or
            it lacks a key of :data:`REQUIRED_KEYS` (then it is not a calibration result).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'results file {path} does not exist')
    with open(path) as f:
        try:
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
        except json.JSONDecodeError as error:
            raise ValueError(f'{path} is not valid JSON ({error})') from None
    missing = ([key for key in REQUIRED_KEYS if key not in summary]
               if isinstance(summary, dict) else list(REQUIRED_KEYS))
    if missing:
        raise ValueError(f'{path} is not a PixelCalibrationMetric result (a calibration.json; '
                         f'missing {", ".join(missing)})')
    return summary


def save_calibration(summary: dict, path: str, history: str | None = None) -> None:
    """Write ``summary`` to ``path`` (replaced whole: a reader never sees half a file).

    Args:
        summary (dict): A :meth:`CalibrationStats.summary` dict.
        path (str): The ``calibration.json`` to write; its folder is created.
        history (str, optional): A ``calibration_history.jsonl`` to append the summary to as
            one line. Default: None.
    """
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix='.calibration.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(handle, 'w') as f:
            json.dump(summary, f, indent=1)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    if history is not None:
        with open(history, 'a') as f:
            f.write(json.dumps(summary) + '\n')
