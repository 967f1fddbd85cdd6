"""Add CALS to an existing mmseg config: ``add_cals(cfg)``, or the same from the shell.

In Python (a training script, a notebook)::

    from mmengine.config import Config
    from mmcals.config_utils import add_cals
    cfg = add_cals(Config.fromfile('mmseg::pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py'))

From the shell, writing a plain config file that ``tools/train.py`` (or any config inheriting
it through ``_base_``) reads like any other::

    python -m mmcals.config_utils mmseg::pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py \\
        configs/my_pspnet_cals.py --margin 10

What is added (docs/method.md §2, §3, §4): next to the softmax ``CrossEntropyLoss`` of every
decode and auxiliary head, a ``CALSLoss`` with that head's ``num_classes`` and the
cross-entropy's ``loss_weight`` (0.4 on mmseg's auxiliary FCN heads); a ``CALSHook``; a
``PixelCalibrationMetric`` next to the validation and test metrics; ``mmcals`` in
``custom_imports``. A config file cannot call this function: mmengine treats a config with
``import`` statements as a different ("lazy") config format that does not mix with ``_base_``.
"""
from __future__ import annotations

import argparse
import copy
import os
import os.path as osp
import sys
from collections.abc import Sequence

CE_TYPES = ('CrossEntropyLoss', 'mmseg.CrossEntropyLoss')
CALS_TYPES = ('CALSLoss', 'mmcals.CALSLoss', 'mmseg.CALSLoss')
HEAD_KEYS = ('decode_head', 'auxiliary_head')


def _type_name(cfg) -> str:
    value = cfg.get('type', '')
    return value if isinstance(value, str) else getattr(value, '__name__', str(value))


def _is_softmax_ce(loss: dict) -> bool:
    return (_type_name(loss) in CE_TYPES and not loss.get('use_sigmoid', False)
            and not loss.get('use_mask', False))


def _heads(model: dict):
    """Yield ``(where, head_dict)`` for every decode/auxiliary head config of ``model``."""
    for key in HEAD_KEYS:
        heads = model.get(key)
        if not heads:
            continue
        if isinstance(heads, dict):
            yield key, heads
        else:  # cascade segmentors (OCRNet...) and several auxiliary heads are lists
            for i, head in enumerate(heads):
                yield f'{key}[{i}]', head


def _add_to_head(where: str, head: dict, loss_kwargs: dict) -> bool:
    """Append a CALSLoss to ``head['loss_decode']``; False if the head already has one."""
    if 'loss_decode' not in head:
        raise ValueError(f'{where} ({_type_name(head)}) has no loss_decode: add_cals supports '
                         "mmseg's per-pixel decode heads; add CALSLoss to this head by hand")
    losses = head['loss_decode']
    losses = [losses] if isinstance(losses, dict) else list(losses)
    if any(_type_name(loss) in CALS_TYPES for loss in losses):
        return False
    ce = [loss for loss in losses if _is_softmax_ce(loss)]
    if len(ce) != 1:
        found = [_type_name(loss) for loss in losses]
        raise ValueError(
            f'{where}.loss_decode holds {len(ce)} softmax CrossEntropyLoss entries '
            f'(losses: {found}); add_cals puts CALSLoss next to exactly one, with its '
            'loss_weight: add dict(type="CALSLoss", ...) to this head by hand')
    num_classes = head.get('num_classes')
    if not isinstance(num_classes, int) or isinstance(num_classes, bool):
        raise ValueError(f'{where}.num_classes is {num_classes!r}: CALSLoss needs the number '
                         'of classes as an int')
    cals = dict(type='CALSLoss', num_classes=num_classes,
                loss_weight=ce[0].get('loss_weight', 1.0), **loss_kwargs)
    head['loss_decode'] = losses + [cals]
    return True


def _with_metric(evaluator, metric: dict):
    if evaluator is None:
        return None
    metrics = [evaluator] if isinstance(evaluator, dict) else list(evaluator)
    if any(_type_name(m) == metric['type'] for m in metrics):
        return metrics
    return metrics + [copy.deepcopy(metric)]


def add_cals(cfg,
             margin: float | None = None,
             hook: dict | None = None,
             metric: dict | None = None,
             **loss_kwargs):
    """Add CALS to every decode/auxiliary head of an mmseg config (docs/method.md §2-§4).

    Heads that already hold a ``CALSLoss`` are left as they are, so calling this twice
    changes nothing the second time.

    Args:
        cfg (mmengine.config.Config | dict): The config; changed in place and returned.
        margin (float, optional): ``margin`` of every added ``CALSLoss``. Default: None
            (CALSLoss's own default, 10).
        hook (dict, optional): Arguments of the added ``CALSHook`` (e.g.
            ``dict(source='train', interval=100)``); not added if the config has one.
            Default: None (the hook's defaults).
        metric (dict, optional): Arguments of the added ``PixelCalibrationMetric`` (e.g.
            ``dict(num_bins=15)``); not added where the evaluator has one. Default: None.
        **loss_kwargs: Further ``CALSLoss`` arguments (``penalty``, ``normalize``...).

    Returns:
        The same ``cfg``.

    Raises:
        ValueError: A head has no ``loss_decode``, no or several softmax cross-entropy
            losses, or no integer ``num_classes``; or the model has no head at all. The
            config is left unchanged then.
    """
    for key in ('type', 'num_classes', 'loss_weight'):
        if key in loss_kwargs:
            raise ValueError(f'add_cals sets CALSLoss {key} itself (from each head); do not '
                             'pass it')
    model = cfg.get('model')
    if not model or not any(True for _ in _heads(model)):
        raise ValueError('add_cals found no decode_head/auxiliary_head in cfg.model: it adds '
                         'CALSLoss to the heads of an mmseg segmentor config')
    if margin is not None:
        loss_kwargs = dict(loss_kwargs, margin=float(margin))
    new_model = copy.deepcopy(model)  # all heads checked before cfg is touched
    for where, head in _heads(new_model):
        _add_to_head(where, head, loss_kwargs)
    cfg['model'] = new_model

    hooks = list(cfg.get('custom_hooks') or [])
    if not any(_type_name(h) == 'CALSHook' for h in hooks):
        hooks.append(dict(type='CALSHook', **(hook or {})))
    cfg['custom_hooks'] = hooks
    calibration = dict(type='PixelCalibrationMetric', **(metric or {}))
    for key in ('val_evaluator', 'test_evaluator'):
        if cfg.get(key) is not None:
            cfg[key] = _with_metric(cfg[key], calibration)
    imports = cfg.get('custom_imports') or dict(imports=[], allow_failed_imports=False)
    modules = imports.get('imports', [])
    modules = [modules] if isinstance(modules, str) else list(modules)
    if 'mmcals' not in modules:
        modules.append('mmcals')
    cfg['custom_imports'] = dict(imports, imports=modules)
    return cfg


def resolve_config_path(path: str) -> str:
    """The file behind ``path``; ``'<package>::<folder>/<name>.py'`` is looked up in that
    installed package's ``.mim/configs`` (where mmengine looks for ``_base_`` of that form).
    """
    if '::' not in path:
        return path
    import mmengine.config.config as mmengine_config
    package, relative = path.split('::', 1)
    # mmengine.config.config's lookup, which mmcals.compat makes see an editable mmcals.
    return osp.join(mmengine_config.get_installed_path(package), '.mim', 'configs', relative)


def parse_args(argv: Sequence[str] | None = None):
    parser = argparse.ArgumentParser(
        prog='python -m mmcals.config_utils',
        description='Write a copy of an mmseg config with CALS added to every decode and '
                    'auxiliary head (CALSLoss, CALSHook, PixelCalibrationMetric).')
    parser.add_argument('config', help="source config: a path or 'mmseg::<folder>/<name>.py'")
    parser.add_argument('out', help='config file to write (.py)')
    parser.add_argument('--margin', type=float, default=None,
                        help="CALS margin (default: CALSLoss's, 10)")
    parser.add_argument('--penalty', choices=('phr', 'p2', 'p3'), default=None,
                        help="CALS penalty (default: CALSLoss's)")
    parser.add_argument('--source', choices=('val', 'train'), default=None,
                        help="CALSHook statistics source (default: CALSHook's)")
    parser.add_argument('--force', action='store_true', help='overwrite OUT if it exists')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from mmengine.config import Config

    import mmcals  # noqa: F401  (mmcals:: and mmseg:: configs, registrations)
    args = parse_args(argv)
    if not args.out.endswith('.py'):
        print(f'error: {args.out}: the output config must be a .py file', file=sys.stderr)
        return 2
    if osp.exists(args.out) and not args.force:
        print(f'error: {args.out} exists; pass --force to overwrite it', file=sys.stderr)
        return 2
    path = resolve_config_path(args.config)
    if not osp.isfile(path):
        print(f'error: config {args.config} does not exist ({path})', file=sys.stderr)
        return 2
    cfg = Config.fromfile(path)
    loss_kwargs = {} if args.penalty is None else dict(penalty=args.penalty)
    hook = None if args.source is None else dict(source=args.source)
    try:
        add_cals(cfg, margin=args.margin, hook=hook, **loss_kwargs)
    except ValueError as error:
        print(f'error: {args.config}: {error}', file=sys.stderr)
        return 2
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    partial = f'{args.out}.partial.py'  # renamed into place only once complete
    try:
        cfg.dump(partial)
        os.replace(partial, args.out)
    finally:
        if osp.exists(partial):
            os.remove(partial)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
