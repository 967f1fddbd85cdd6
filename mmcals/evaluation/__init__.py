"""mmcals.evaluation."""
from .calibration_metric import PixelCalibrationMetric
from .calibration_stats import CalibrationStats

__all__ = ['CalibrationStats', 'PixelCalibrationMetric']
