"""mmcals.evaluation."""
from .calibration_metric import PixelCalibrationMetric
from .calibration_stats import CalibrationStats
from .logit_gaps import LogitGapMetric

__all__ = ['CalibrationStats', 'LogitGapMetric', 'PixelCalibrationMetric']
