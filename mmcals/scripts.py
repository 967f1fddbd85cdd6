"""The console scripts (pyproject.toml ``[project.scripts]``): each runs one of the tools.

``mmcals-train CONFIG ...`` is ``python tools/train.py CONFIG ...``, and so on for every tool:
the scripts of the repo's ``tools/`` ship inside the package as ``.mim/tools`` (setup.py),
which is also where ``mim train mmcals CONFIG`` and ``mim test mmcals CONFIG`` run them from.
One copy of each tool, so the command, ``mim`` and a checkout take the same arguments and
give the same errors (one line, exit code 2, for bad input).
"""
import os.path as osp
import runpy
import sys

TOOLS = osp.join(osp.dirname(osp.abspath(__file__)), '.mim', 'tools')


def _run(script: str) -> None:
    path = osp.join(TOOLS, script)
    if not osp.isfile(path):
        sys.exit(f'error: {path} is missing from this mmcals installation: reinstall mmcals '
                 '(pip install mmcals, or make setup in a checkout)')
    runpy.run_path(path, run_name='__main__')


def train() -> None:
    """``mmcals-train``: tools/train.py."""
    _run('train.py')


def test() -> None:
    """``mmcals-test``: tools/test.py."""
    _run('test.py')


def logit_gaps() -> None:
    """``mmcals-logit-gaps``: tools/analysis/logit_gaps.py."""
    _run(osp.join('analysis', 'logit_gaps.py'))


def temperature_scaling() -> None:
    """``mmcals-temperature-scaling``: tools/analysis/temperature_scaling.py."""
    _run(osp.join('analysis', 'temperature_scaling.py'))


def compare_calibration() -> None:
    """``mmcals-compare-calibration``: tools/analysis/compare_calibration.py."""
    _run(osp.join('analysis', 'compare_calibration.py'))


def reliability_diagram() -> None:
    """``mmcals-reliability-diagram``: tools/analysis/reliability_diagram.py."""
    _run(osp.join('analysis', 'reliability_diagram.py'))
