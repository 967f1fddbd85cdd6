"""mmcals.datasets: CamVid and the demo's generated street scenes."""
from .camvid import CamVidDataset
from .synthetic_streets import SyntheticStreetsDataset
from .transforms import CheckSampleFiles, CheckSegLabels

__all__ = ['CamVidDataset', 'SyntheticStreetsDataset', 'CheckSampleFiles', 'CheckSegLabels']
