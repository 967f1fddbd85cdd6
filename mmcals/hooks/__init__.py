"""mmcals.hooks."""
from .cals_hook import CALSHook

__all__ = ['CALSHook']
