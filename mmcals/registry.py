"""Registries of scope ``mmcals``: empty children of mmseg's, so lookups fall through to mmseg.

mmcals registers its modules in mmseg's registries, so configs with mmseg's default scope find
them. A config inherited through ``_base_ = 'mmcals::...'`` gets ``_scope_='mmcals'`` on its
dicts, and mmengine then imports this module and looks for registries of that scope; each child
here answers with whatever its mmseg parent holds (mmseg's and mmcals' modules alike).
"""
from mmengine.registry import Registry
from mmseg import registry as mmseg_registry


def _child(parent: Registry) -> Registry:
    return Registry(parent.name, parent=parent, scope='mmcals')


DATASETS = _child(mmseg_registry.DATASETS)
DATA_SAMPLERS = _child(mmseg_registry.DATA_SAMPLERS)
EVALUATOR = _child(mmseg_registry.EVALUATOR)
HOOKS = _child(mmseg_registry.HOOKS)
INFERENCERS = _child(mmseg_registry.INFERENCERS)
LOG_PROCESSORS = _child(mmseg_registry.LOG_PROCESSORS)
LOOPS = _child(mmseg_registry.LOOPS)
METRICS = _child(mmseg_registry.METRICS)
MODELS = _child(mmseg_registry.MODELS)
MODEL_WRAPPERS = _child(mmseg_registry.MODEL_WRAPPERS)
OPTIMIZERS = _child(mmseg_registry.OPTIMIZERS)
OPTIM_WRAPPERS = _child(mmseg_registry.OPTIM_WRAPPERS)
OPTIM_WRAPPER_CONSTRUCTORS = _child(mmseg_registry.OPTIM_WRAPPER_CONSTRUCTORS)
PARAM_SCHEDULERS = _child(mmseg_registry.PARAM_SCHEDULERS)
RUNNERS = _child(mmseg_registry.RUNNERS)
RUNNER_CONSTRUCTORS = _child(mmseg_registry.RUNNER_CONSTRUCTORS)
TASK_UTILS = _child(mmseg_registry.TASK_UTILS)
TRANSFORMS = _child(mmseg_registry.TRANSFORMS)
VISBACKENDS = _child(mmseg_registry.VISBACKENDS)
VISUALIZERS = _child(mmseg_registry.VISUALIZERS)
WEIGHT_INITIALIZERS = _child(mmseg_registry.WEIGHT_INITIALIZERS)
