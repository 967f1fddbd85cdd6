"""tools/demo.py (what `make demo` runs) shrunk to a few iterations: every promised file."""
import json
import math
import os.path as osp
import re

from PIL import Image
from tooling import run_tool

FILES = ('summary.md', 'comparison.md', 'reliability_comparison.png', 'ce_reliability.png',
         'cals_reliability.png', 'cals_lambda_per_class.png', 'cals_diagnostics.png',
         'ce_logit_gaps.png', 'cals_logit_gaps.png', 'ce_logit_gaps/logit_gaps.json',
         'cals_logit_gaps/logit_gaps.json')
DIAGNOSTICS = ('violating_share', 'acting_share', 'mean_h', 'gap_p50', 'gap_p90', 'gap_p99')


def _finite(values):
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def test_demo_trains_both_and_writes_the_comparison(tmp_path):
    work_dir = tmp_path / 'demo'
    # One thread per run: the demo trains its two runs side by side on a multi-core CPU.
    result = run_tool('demo.py', '--work-dir', work_dir, '--iters', 2,
                      env={'OMP_NUM_THREADS': '1'})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for name in FILES:
        assert osp.getsize(work_dir / name) > 0, name
    for name in ('reliability_comparison.png', 'ce_reliability.png', 'cals_diagnostics.png',
                 'ce_logit_gaps.png'):
        with Image.open(work_dir / name) as image:
            assert image.size[0] > 100 and image.size[1] > 100

    table = (work_dir / 'comparison.md').read_text()
    assert '| CE ' in table and '| CALS ' in table and 'ECE' in table and 'mIoU' in table
    for row in [line for line in table.splitlines() if line.startswith(('| CE ', '| CALS '))]:
        numbers = [float(x) for x in re.findall(r'-?\d+\.\d+', row)]
        assert len(numbers) == 6 and _finite(numbers), row

    # CALS's multipliers and constraint diagnostics, at every update.
    history = json.loads((work_dir / 'cals' / 'cals_history.json').read_text())
    updates = [e for e in history['losses']['decode_head'] if e['update']]
    assert len(updates) == 2  # --iters 2 validates (and updates) after every iteration
    for entry in updates:
        assert _finite(entry['lambda']) and len(entry['lambda']) == 8
        for key in DIAGNOSTICS:
            assert _finite(entry[key]) and len(entry[key]) == 8, key
        assert _finite(entry['all'].values())

    # Both final models measured on the 20 validation images of 96 x 128: 7 pairs a pixel.
    for name in ('ce', 'cals'):
        gaps = json.loads((work_dir / f'{name}_logit_gaps' / 'logit_gaps.json').read_text())
        assert gaps['all']['pairs'] == 20 * 96 * 128 * 7
        assert _finite(gaps['all']['gap_at_quantile'].values())
        assert _finite(gaps['all']['share_above'].values())

    summary = (work_dir / 'summary.md').read_text()
    assert 'Logit gaps of the final models' in summary and '% acting' in summary
    # The summary is printed too, and mmengine's progress lines show while training.
    assert 'CALS over training' in result.stdout and '[CE]' in result.stdout
    assert 'Iter(train)' in result.stdout + result.stderr
