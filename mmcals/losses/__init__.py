"""mmcals.losses: CALS and the calibration baselines it is compared with."""
from .cals import CALSLoss
from .confidence_penalty import ConfidencePenaltyLoss
from .focal import SoftmaxFocalLoss
from .label_smoothing import LabelSmoothingLoss
from .margin import MarginLoss

__all__ = ['CALSLoss', 'ConfidencePenaltyLoss', 'LabelSmoothingLoss', 'MarginLoss',
           'SoftmaxFocalLoss']
