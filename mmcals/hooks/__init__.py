"""mmcals.hooks."""
from .cals_hook import CALSHook
from .checkpoint_hook import SafeCheckpointHook
from .confidence_map_hook import ConfidenceMapHook
from .divergence_hook import DivergenceHook, TrainingDiverged

__all__ = ['CALSHook', 'SafeCheckpointHook', 'ConfidenceMapHook', 'DivergenceHook',
           'TrainingDiverged']
