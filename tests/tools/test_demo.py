"""tools/demo.py (what `make demo` runs) shrunk to a few iterations: every promised file."""
import os.path as osp

from PIL import Image
from tooling import run_tool


def test_demo_trains_both_and_writes_the_comparison(tmp_path):
    work_dir = tmp_path / 'demo'
    result = run_tool('demo.py', '--work-dir', work_dir, '--iters', 2)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for name in ('comparison.md', 'reliability_comparison.png', 'ce_reliability.png',
                 'cals_reliability.png', 'cals_lambda_per_class.png'):
        assert osp.getsize(work_dir / name) > 0, name
    for name in ('reliability_comparison.png', 'ce_reliability.png', 'cals_lambda_per_class.png'):
        with Image.open(work_dir / name) as image:
            assert image.size[0] > 100 and image.size[1] > 100
    table = (work_dir / 'comparison.md').read_text()
    assert '| CE ' in table and '| CALS ' in table and 'ECE' in table and 'mIoU' in table
    # The table is printed too, and mmengine's progress lines show while training.
    assert 'CALS' in result.stdout and 'Iter(train)' in result.stdout + result.stderr
