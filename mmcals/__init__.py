"""mmcals: Class Adaptive Label Smoothing (CALS) for MMSegmentation.

Importing this package registers mmcals' modules in mmseg's registries and makes
``_base_ = 'mmcals::...'`` resolvable. It changes nothing else in torch, mmengine or mmseg,
except adding the ``mmcv._ext`` stand-in that ``import mmseg.models`` needs when mmcv has no
compiled ops (:mod:`mmcals.compat`, ``docs/stack.md``).
"""
from mmengine.config.utils import MODULE2PACKAGE

from . import compat

__version__ = '0.1.0'

MODULE2PACKAGE.setdefault('mmcals', 'mmcals')
compat.install_mmcv_ext_stub()
compat.patch_editable_config_path()

from . import (  # noqa: E402,F401  (registrations)
    calibration,
    datasets,
    evaluation,
    hooks,
    losses,
    registry,
)
