"""Installs ``configs/`` as ``mmcals/.mim/configs/configs`` for ``_base_ = 'mmcals::...'``.

mmengine looks for a package's configs under ``<package>/.mim/configs`` and requires a folder
after ``::``; keeping the repo's own ``configs/`` folder there means downstream configs write
the same path as in this repo: ``_base_ = 'mmcals::configs/deeplabv3_cals_cityscapes.py'``.
A wheel gets a copy; an editable install gets a symlink to the checkout's ``configs/`` so
edits show up at once. ``data_splits/`` goes next to it (``.mim/configs/data_splits``), where
configs that read split lists through ``{{fileDirname}}/../../data_splits`` find it in a
checkout and an installed package alike. ``tools/`` goes to ``.mim/tools``, where
``mim train mmcals CONFIG`` (and ``mim test``) look for the scripts, and where the console
scripts (:mod:`mmcals.scripts`) run them from. A wheel also gets ``mmcals-config-scope.pth``,
which makes ``mmcals::`` resolvable in processes that never import mmcals (``_mmcals_site.py``).
Everything else about the build is in pyproject.toml.
"""
import os
import os.path as osp
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = osp.dirname(osp.abspath(__file__))


def write_mim(package_dir: str, link: bool) -> None:
    mim = osp.join(package_dir, '.mim')
    shutil.rmtree(mim, ignore_errors=True)
    os.makedirs(osp.join(mim, 'configs'))
    for folder in ('configs', 'data_splits'):
        if link:
            os.symlink(osp.join('..', '..', '..', folder), osp.join(mim, 'configs', folder))
        else:
            shutil.copytree(osp.join(HERE, folder), osp.join(mim, 'configs', folder),
                            ignore=shutil.ignore_patterns('__pycache__'))
    if link:
        os.symlink(osp.join('..', '..', 'tools'), osp.join(mim, 'tools'))
    else:  # the study scripts of tools/experiments only make sense in a checkout
        shutil.copytree(osp.join(HERE, 'tools'), osp.join(mim, 'tools'),
                        ignore=shutil.ignore_patterns('__pycache__', 'experiments'))
    # mmengine reads model-index.yml before falling back to .mim/configs/<path>.
    with open(osp.join(mim, 'model-index.yml'), 'w') as f:
        f.write('Import: []\n')


class BuildWithConfigs(build_py):

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            write_mim(osp.join(HERE, 'mmcals'), link=True)
        else:
            write_mim(osp.join(self.build_lib, 'mmcals'), link=False)
            with open(osp.join(self.build_lib, 'mmcals-config-scope.pth'), 'w') as f:
                f.write('import _mmcals_site; _mmcals_site.install()\n')


setup(cmdclass={'build_py': BuildWithConfigs})
