"""mmcals.losses: CALS and the calibration baselines it is compared with."""
from .cals import CALSLoss, cals_penalty
from .confidence_penalty import ConfidencePenaltyLoss
from .constraint_stats import ConstraintStats
from .focal import SoftmaxFocalLoss
from .label_smoothing import LabelSmoothingLoss
from .margin import MarginLoss

__all__ = ['CALSLoss', 'ConfidencePenaltyLoss', 'ConstraintStats', 'LabelSmoothingLoss',
           'MarginLoss', 'SoftmaxFocalLoss', 'cals_penalty']
