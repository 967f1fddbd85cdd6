"""tools/experiments/camvid_lambda_table.py on a generated CamVid-layout folder."""
import json
import os.path as osp

import numpy as np
import pytest
from PIL import Image
from tooling import run_tool

from mmcals.evaluation import lambda_table

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(REPO, 'tools', 'experiments', 'camvid_lambda_table.py')
CLASSES = ['Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol', 'Fence',
           'Car', 'Pedestrian', 'Bicyclist']


@pytest.fixture(scope='module')
def tool():
    """The tool's logic (and ``main``), as its script imports it."""
    return lambda_table


def _layout(root, rng):
    """Three label images, one of sequence 0006R0 (to be excluded); returns their arrays."""
    (root / 'trainannot').mkdir()
    labels = {}
    lines = []
    for stem in ('0001TP_006690', '0016E5_00390', '0006R0_f00930'):
        label = rng.integers(0, 12, size=(6, 8)).astype(np.uint8)
        Image.fromarray(label).save(root / 'trainannot' / f'{stem}.png')
        labels[stem] = label
        lines.append(f'train/{stem}.png trainannot/{stem}.png')
    (root / 'train.txt').write_text('\n'.join(lines) + '\n')
    return labels


def _history(path, lambdas):
    entries = [{'update': i, 'iter': 10 * i, 'epoch': 0, 'pixels': 100 * i, 'lambda': lam,
                'rho': [1.0] * len(CLASSES)} for i, lam in enumerate(lambdas)]
    path.write_text(json.dumps({'source': 'val', 'classes': CLASSES,
                                'losses': {'decode_head': entries, 'auxiliary_head': entries[:1]}}))
    return path


def test_shares_and_final_lambda(tmp_path, tool, capsys):
    rng = np.random.default_rng(0)
    labels = _layout(tmp_path, rng)
    kept = np.concatenate([labels['0001TP_006690'].ravel(), labels['0016E5_00390'].ravel()])
    kept = kept[kept != 11]
    expected_share = [100.0 * np.mean(kept == k) for k in range(len(CLASSES))]
    final = list(rng.uniform(0.01, 5.0, size=len(CLASSES)))
    history = _history(tmp_path / 'h.json', [[1e-6] * len(CLASSES), final])

    tool.main([f'run={history}', '--camvid-root', str(tmp_path),
               '--exclude-sequences', '0006R0'])
    out = capsys.readouterr().out
    rows = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]]
            for line in out.splitlines() if line.startswith('| ') and '---' not in line}
    assert 'the 2 training images' in out
    for k, name in enumerate(CLASSES):
        share, lam = rows[name]
        assert share == f'{expected_share[k]:.2f}'
        assert lam == f'{final[k]:.3g}'
    assert '1 updates, last from 100 pixels' in out


def test_unknown_head(tmp_path, tool):
    history = _history(tmp_path / 'h.json', [[1e-6] * len(CLASSES)])
    with pytest.raises(ValueError, match="no updates of 'aux'"):
        tool.final_lambda(str(history), 'aux')


def test_the_script_runs_the_module_and_reads_camvid_root(tmp_path):
    """The script is the module's entry point; --camvid-root defaults to $CAMVID_ROOT."""
    labels = _layout(tmp_path, np.random.default_rng(1))
    history = _history(tmp_path / 'h.json', [[0.5] * len(CLASSES)])
    done = run_tool(TOOL, f'run={history}', env={'CAMVID_ROOT': str(tmp_path)}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f'the {len(labels)} training images' in done.stdout
