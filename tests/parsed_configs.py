"""Configs parsed once per test process: mmengine re-reads mmseg's model-index metafiles for
every ``mmseg::`` base (about a second per parse), and several test modules read the same
configs. Each caller gets its own deep copy to change."""
import copy
import functools
import os.path as osp

from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def _parsed(config: str) -> Config:
    if '::' in config:
        from mmcals.config_utils import resolve_config_path
        return Config.fromfile(resolve_config_path(config))
    return Config.fromfile(osp.join(REPO, 'configs', config))


def load(config: str) -> Config:
    """``configs/<config>``, or an installed package's ``'<package>::<path>'``, parsed once."""
    return copy.deepcopy(_parsed(config))


def parse_anew(config: str) -> Config:
    """Parse again, e.g. after changing an environment variable the config reads."""
    return _parsed.__wrapped__(config)
