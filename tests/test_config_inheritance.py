"""Downstream use of an installed (non-editable) mmcals, from a folder outside the repo.

One wheel, installed with ``pip install --target``: configs inherit ours as
``mmcals::configs/...`` (also in processes that never import mmcals), the console scripts
train them, and ``mim train mmcals`` finds the training script where it looks for it.
"""
import glob
import json
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
    # mim train/test run <package>/.mim/tools/{train,test}.py, the console scripts every tool:
    # a copy of tools/ without the study scripts of tools/experiments.
    tools = installed_wheel / 'mmcals' / '.mim' / 'tools'
    in_repo = {osp.relpath(p, osp.join(REPO, 'tools')) for p in glob.glob(
        osp.join(REPO, 'tools', '**', '*.*'), recursive=True) if '__pycache__' not in p
        and not p.startswith(osp.join(REPO, 'tools', 'experiments'))}
    shipped = {osp.relpath(p, tools) for p in glob.glob(str(tools / '**' / '*.*'), recursive=True)
               if '__pycache__' not in p}
    assert shipped == in_repo and {'train.py', 'test.py'} <= shipped
    for name in shipped:
        assert (tools / name).read_bytes() == open(osp.join(REPO, 'tools', name), 'rb').read()


def test_script_that_imports_mmcals_resolves_the_installed_config(installed_wheel, tmp_path):
    config = _downstream_config(tmp_path, 'mmcals::configs/deeplabv3_cals_cityscapes.py')
    code = ('import mmcals, json; from mmengine.config import Config; '
            f'cfg = Config.fromfile({config!r}); '
            'print(json.dumps([mmcals.__file__, [l["type"] for l in '
            'cfg.model.decode_head.loss_decode], [h["type"] for h in cfg.custom_hooks]]))')
    result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=str(installed_wheel)))
    assert result.returncode == 0, result.stderr[-3000:]
    module_file, losses, hooks = json.loads(result.stdout.strip().splitlines()[-1])
    assert module_file.startswith(str(installed_wheel))  # the wheel, not the checkout
    assert losses == ['CrossEntropyLoss', 'CALSLoss'] and 'CALSHook' in hooks


def test_a_process_that_never_imports_mmcals_reads_mmcals_configs(installed_wheel, tmp_path):
    """What mim, mmseg's tools/train.py or any launcher does: parse first, import later."""
    config = _downstream_config(tmp_path, 'mmcals::configs/deeplabv3_cals_cityscapes.py')
    # site.addsitedir runs the folder's .pth files, as Python's start-up does for
    # site-packages; a --target folder on PYTHONPATH alone gets no .pth processing.
    code = ('import json, site, sys; from mmengine.config import Config; '
            f'site.addsitedir({str(installed_wheel)!r}) if sys.argv[1] == "site" else None; '
            f'cfg = Config.fromfile({config!r}, import_custom_modules=False); '
            'print(json.dumps([[l["type"] for l in cfg.model.decode_head.loss_decode], '
            '"mmcals" in sys.modules]))')
    env = dict(os.environ, PYTHONPATH=str(installed_wheel))
    for mode in ('site', 'plain'):
        result = subprocess.run([sys.executable, '-c', code, mode], cwd=tmp_path, env=env,
                                capture_output=True, text=True)
        if mode == 'plain':  # without the wheel's .pth: mmengine's refusal (the control)
            assert result.returncode != 0
            assert 'does not support to load mmcals config' in result.stderr
        else:
            assert result.returncode == 0, result.stderr[-3000:]
            losses, imported = json.loads(result.stdout.strip().splitlines()[-1])
            assert losses == ['CrossEntropyLoss', 'CALSLoss'] and not imported


def test_console_script_trains_a_downstream_config(installed_wheel, tiny_cityscapes, tmp_path):
    config = _downstream_config(tmp_path, 'mmcals::configs/deeplabv3_cals_cityscapes.py')
    result = subprocess.run(
        [str(installed_wheel / 'bin' / 'mmcals-train'), config, '--work-dir', tmp_path / 'wd',
         '--cfg-options', *cityscapes_options(tiny_cityscapes), 'train_cfg.max_iters=2',
         'train_cfg.val_interval=2'], cwd=tmp_path, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=str(installed_wheel)), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'decode.loss_cals' in result.stdout + result.stderr
    assert osp.isfile(tmp_path / 'wd' / 'iter_2.pth')


def test_mim_finds_a_train_script_it_can_run(installed_wheel, tmp_path):
    """mim train runs ``python <pkg>/.mim/tools/train.py CONFIG --launcher none ...``, and
    adds ``--gpus N`` when that script's help mentions --gpus (ours has no such option)."""
    script = installed_wheel / 'mmcals' / '.mim' / 'tools' / 'train.py'
    result = subprocess.run([sys.executable, str(script), '-h'], cwd=tmp_path,
                            capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(installed_wheel)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert '--launcher' in result.stdout and '--vis-backend' in result.stdout
    assert '--gpus' not in result.stdout


def test_the_folder_rule_of_mmengine_is_explained(tmp_path):
    """mmengine needs a folder after '::'; the top-level form fails, the documented one works."""
    bad = tmp_path / 'bad.py'
    bad.write_text("_base_ = 'mmcals::deeplabv3_ce_cityscapes.py'\n")
    result = run_tool('train.py', bad, '--work-dir', tmp_path / 'wd')
    assert result.returncode == 2 and not osp.exists(tmp_path / 'wd')
    assert "mmcals::configs/<name>.py" in result.stderr and 'Traceback' not in result.stderr
