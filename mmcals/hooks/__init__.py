"""mmcals.hooks."""
from .cals_hook import CALSHook
from .checkpoint_hook import SafeCheckpointHook
from .divergence_hook import DivergenceHook, TrainingDiverged

__all__ = ['CALSHook', 'SafeCheckpointHook', 'DivergenceHook', 'TrainingDiverged']
