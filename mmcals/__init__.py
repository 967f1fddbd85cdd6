"""mmcals: Class Adaptive Label Smoothing (CALS) for MMSegmentation.

Importing this package applies the stack fixes of :mod:`mmcals.compat`, registers mmcals'
modules in mmseg's registries and makes ``_base_ = 'mmcals::...'`` resolvable.
"""
from mmengine.config.utils import MODULE2PACKAGE

from . import compat

__version__ = '0.1.0'

MODULE2PACKAGE.setdefault('mmcals', 'mmcals')
compat.apply()

from . import datasets, evaluation, hooks, losses, registry  # noqa: E402,F401  (registrations)
