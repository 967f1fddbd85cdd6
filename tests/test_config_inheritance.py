"""Downstream configs inherit ours from an installed (non-editable) mmcals: mmcals::configs/..."""
import os
import os.path as osp
import subprocess
import sys

import pytest
from tooling import REPO, cityscapes_options, run_tool

TINY = osp.join(REPO, 'tests', 'configs', 'deeplabv3_r18_tiny_cityscapes.py')


@pytest.fixture(scope='module')
def installed_wheel(tmp_path_factory):
    """mmcals built as a wheel and installed into its own folder, as `pip install mmcals` would."""
    tmp = tmp_path_factory.mktemp('wheel')
    build = subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
         '-w', str(tmp / 'dist'), REPO], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp / 'dist').glob('mmcals-*.whl'))
    site = tmp / 'site'
    install = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(site),
         str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    return site


def _downstream_config(folder, base: str) -> str:
    """The tiny test config, but inheriting ``base`` the way a downstream project writes it."""
    text = open(TINY).read().replace(
        "_base_ = '../../configs/deeplabv3_ce_cityscapes.py'", f"_base_ = '{base}'")
    path = osp.join(folder, 'my_project_config.py')
    with open(path, 'w') as f:
        f.write(text)
    return path


def test_wheel_ships_the_configs(installed_wheel):
    configs = installed_wheel / 'mmcals' / '.mim' / 'configs' / 'configs'
    shipped = sorted(p.name for p in configs.glob('*.py'))
    in_repo = sorted(n for n in os.listdir(osp.join(REPO, 'configs')) if n.endswith('.py'))
    assert shipped == in_repo and 'deeplabv3_cals_cityscapes.py' in shipped
    # The VOC configs read their split lists through {{fileDirname}}/../../data_splits.
    assert (configs.parent / 'data_splits' / 'voc2012' / 'mytrain.txt').is_file()


def test_script_that_imports_mmcals_resolves_the_installed_config(installed_wheel, tmp_path):
    config = _downstream_config(tmp_path, 'mmcals::configs/deeplabv3_cals_cityscapes.py')
    code = ('import mmcals, json; from mmengine.config import Config; '
            f'cfg = Config.fromfile({config!r}); '
            'print(json.dumps([mmcals.__file__, [l["type"] for l in '
            'cfg.model.decode_head.loss_decode], [h["type"] for h in cfg.custom_hooks]]))')
    result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=str(installed_wheel)))
    assert result.returncode == 0, result.stderr[-3000:]
    import json
    module_file, losses, hooks = json.loads(result.stdout.strip().splitlines()[-1])
    assert module_file.startswith(str(installed_wheel))  # the wheel, not the checkout
    assert losses == ['CrossEntropyLoss', 'CALSLoss'] and 'CALSHook' in hooks


def test_train_tool_runs_a_downstream_config(installed_wheel, tiny_cityscapes, tmp_path):
    config = _downstream_config(tmp_path, 'mmcals::configs/deeplabv3_cals_cityscapes.py')
    result = run_tool('train.py', config, '--work-dir', tmp_path / 'wd', '--cfg-options',
                      *cityscapes_options(tiny_cityscapes), 'train_cfg.max_iters=2',
                      'train_cfg.val_interval=2', cwd=tmp_path,
                      env={'PYTHONPATH': str(installed_wheel)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'decode.loss_cals' in result.stdout + result.stderr
    assert osp.isfile(tmp_path / 'wd' / 'iter_2.pth')


def test_the_folder_rule_of_mmengine_is_explained(tmp_path):
    """mmengine needs a folder after '::'; the top-level form fails, the documented one works."""
    bad = tmp_path / 'bad.py'
    bad.write_text("_base_ = 'mmcals::deeplabv3_ce_cityscapes.py'\n")
    result = run_tool('train.py', bad, '--work-dir', tmp_path / 'wd')
    assert result.returncode == 2 and not osp.exists(tmp_path / 'wd')
    assert "mmcals::configs/<name>.py" in result.stderr and 'Traceback' not in result.stderr
