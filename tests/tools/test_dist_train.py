"""tools/dist_train.sh with 2 processes: a GPU config runs on CPU (gloo, BN) and the ranks agree."""
import glob
import json
import os.path as osp
import socket

import torch
from tooling import REPO, cityscapes_options, run_tool

TINY = osp.join(REPO, 'tests', 'configs', 'deeplabv3_r18_tiny_cityscapes.py')


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def test_two_process_training_exits_zero_with_identical_weights(tiny_cityscapes, tmp_path):
    config = tmp_path / 'ddp.py'
    config.write_text(f"_base_ = '{TINY}'\n"
                      "custom_imports = dict(imports=['mmcals', 'rank_state_hook'])\n"
                      "custom_hooks = [dict(type='RankStateDumpHook')]\n")
    result = run_tool(
        'dist_train.sh', config, '2', '--work-dir', tmp_path, '--cfg-options',
        *cityscapes_options(tiny_cityscapes), 'train_cfg.max_iters=3', 'train_cfg.val_interval=3',
        'default_hooks.checkpoint.interval=3',
        env={'PORT': _free_port(), 'PYTHONPATH': osp.join(REPO, 'tests'),
             'OMP_NUM_THREADS': '1'})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert osp.isfile(tmp_path / 'iter_3.pth')
    states = [torch.load(tmp_path / f'rank{r}_state.pth', weights_only=True) for r in (0, 1)]
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    # Both ranks really trained: the weights moved away from the initialisation.
    first = torch.load(tmp_path / 'iter_3.pth', map_location='cpu', weights_only=False)
    assert first['meta']['iter'] == 3
    log = glob.glob(str(tmp_path / '*' / '*.log'))[0]
    text = open(log).read()
    assert 'Distributed launcher: pytorch' in text or 'distributed: True' in text
    if not torch.cuda.is_available():
        assert 'No CUDA device: adapted the config' in text

    # dist_test.sh on the same checkpoint: 2 ranks report what one process reports.
    scores = []
    for launcher in ('dist', 'single'):
        out = tmp_path / f'test_{launcher}'
        args = ['test.py', TINY, tmp_path / 'iter_3.pth']
        if launcher == 'dist':
            args = ['dist_test.sh', TINY, tmp_path / 'iter_3.pth', '2']
        result = run_tool(*args, '--work-dir', out, '--cfg-options',
                          *cityscapes_options(tiny_cityscapes),
                          env={'PORT': _free_port(), 'OMP_NUM_THREADS': '1'})
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        # mmengine's LoggerHook writes this file on every rank at once; the ranks' metrics are
        # identical (collected) and come first, only the trailing timings differ, so the
        # leading JSON object holds the metrics even when a shorter write left extra bytes.
        text = open(glob.glob(str(out / '*' / '*.json'))[0]).read()
        scores.append(json.JSONDecoder().raw_decode(text)[0])
    for key in ('mIoU', 'aAcc', 'ECE', 'NLL', 'CECE'):
        assert abs(scores[0][key] - scores[1][key]) < 1e-3, key
