"""Lets mmengine read ``_base_ = 'mmcals::...'`` in every process, not only after ``import mmcals``.

mmengine resolves ``<package>::<path>`` only for the packages in its table
``mmengine.config.utils.MODULE2PACKAGE``. ``import mmcals`` adds itself there, but a launcher
that parses the config before anything imports mmcals (``mim train``, mmseg's own
``tools/train.py``, a script of yours) stops with "mmengine does not support to load mmcals
config". So an installed (non-editable) mmcals puts ``mmcals-config-scope.pth`` into
site-packages; Python runs its one line at start-up, which calls :func:`install`.

:func:`install` imports nothing: it puts a finder first on ``sys.meta_path`` that waits for
``mmengine.config.utils``, lets the normal machinery find and run that module, then adds
``'mmcals': 'mmcals'`` to its table and steps aside. No other module is touched; a process
that never imports mmengine never notices.
"""
import sys

_MODULE = 'mmengine.config.utils'


def _add_entry(module) -> None:
    module.MODULE2PACKAGE.setdefault('mmcals', 'mmcals')


class _AddMmcalsToMmengine:
    """Meta path finder that answers only for ``mmengine.config.utils``, once."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _MODULE:
            return None
        import importlib.machinery
        import importlib.util
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, 'loader', None)
        # A file loader belongs to this one module, so wrapping its exec_module changes how
        # nothing else is loaded (reloads of the module add the entry again).
        if isinstance(loader, (importlib.machinery.SourceFileLoader,
                               importlib.machinery.SourcelessFileLoader)):
            run = loader.exec_module

            def exec_module(module):
                run(module)
                _add_entry(module)

            loader.exec_module = exec_module
        return spec


def install() -> None:
    """Make ``mmcals::`` resolvable by mmengine in this process (called from the ``.pth``)."""
    if _MODULE in sys.modules:
        _add_entry(sys.modules[_MODULE])
    elif not any(isinstance(finder, _AddMmcalsToMmengine) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AddMmcalsToMmengine())
