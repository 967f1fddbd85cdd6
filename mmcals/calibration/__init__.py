"""mmcals.calibration: post-hoc calibration of a trained segmentor (docs/method.md §6)."""
from .scaled_segmentor import TemperatureScaling, build_temperature_scaled_segmentor
from .temperature import (
    PixelSample,
    fit_class_temperatures,
    fit_temperature,
    nll,
    scale_logits,
)
from .temperature_scaling import TemperatureFitMetric, UncalibratedCalibrationMetric

__all__ = ['PixelSample', 'TemperatureFitMetric', 'TemperatureScaling',
           'UncalibratedCalibrationMetric', 'build_temperature_scaled_segmentor',
           'fit_class_temperatures', 'fit_temperature', 'nll', 'scale_logits']
