"""CALSHook: the class-adaptive multiplier updates of CALS (``shared/docs/cals.md`` §3).

Data path: per-class statistics come out of :class:`~mmcals.losses.CALSLoss` (from the
validation outputs, or gathered by its training forwards), are reduced across ranks here,
and go back into each loss through :meth:`CALSLoss.update_multipliers`.
"""
from __future__ import annotations

import copy
import json
import os
import os.path as osp

import torch
from mmengine.dist import all_gather_object, all_reduce, is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import EpochBasedTrainLoop
from mmseg.registry import HOOKS

from ..losses.cals import CALSLoss

SOURCES = ('val', 'train')


@HOOKS.register_module()
class CALSHook(Hook):
    """Update the λ and ρ of every :class:`CALSLoss` in the model (cals.md §3).

    Statistics (per class: the mean of ``clamp(P'(h_k), λ_min, λ_max)`` and of ``h_k``):

    - ``source='val'`` (default, as in the paper): from the validation pass's own outputs,
      without a second pass over the data. The outputs hold only the final decode head's
      logits (at the original image size), so every CALSLoss — auxiliary heads included — is
      updated from those logits, each with its own λ, ρ and margin.
    - ``source='train'``: from the training batches since the last update, gathered inside
      the losses during their forward pass (each head from its own logits).

    Update points: after every validation run during training (``source='val'``, and
    ``source='train'`` with iteration-based loops); at the end of every epoch
    (``source='train'`` with ``EpochBasedTrainLoop``); or every ``interval`` iterations
    (``source='train'`` with ``interval`` set).

    Under distributed training every rank computes the same λ and ρ, equal to one process
    over the union of the data: validation statistics are gathered per image and summed in
    dataset order (images the sampler repeated to even out the ranks are dropped); training
    sums and pixel counts are all-reduced after every iteration (a few numbers per class), so
    that a checkpoint taken between updates holds them whole.

    λ and ρ live in the losses' buffers, so checkpoints carry them. The hook adds its own
    state (history, pending training sums) to checkpoints under ``'cals_hook'``. mmengine
    saves a checkpoint *before* the validation of the same iteration; a run resumed from it
    runs that validation first, so λ and ρ continue exactly as without the interruption.

    At each update the mean/min/max of λ and ρ go to mmengine's message hub as
    ``cals/<head>/{lambda,rho}_{mean,min,max}`` (logged with the validation metrics, or with the
    training log for training-time updates; hence in ``vis_data/scalars.json``, TensorBoard and
    the other visualizer backends), per-class λ and ρ are written to
    ``<work_dir>/<history_file>`` as JSON (one line per update), and at the end of training λ
    per class over the updates is plotted to ``<work_dir>/<plot_file>``.

    Args:
        source (str): ``'val'`` or ``'train'``. Default: ``'val'``.
        interval (int, optional): With ``source='train'``, update every this many training
            iterations instead. Default: None.
        history_file (str): JSON history, relative to the work dir. Default:
            ``'cals_history.json'``.
        plot_file (str): PNG of λ per class over updates, relative to the work dir. Default:
            ``'cals_lambda.png'``.
    """

    priority = 'NORMAL'  # before LoggerHook (logs our scalars) and CheckpointHook (saves λ)

    def __init__(self,
                 source: str = 'val',
                 interval: int | None = None,
                 history_file: str = 'cals_history.json',
                 plot_file: str = 'cals_lambda.png'):
        if source not in SOURCES:
            raise ValueError(f'CALSHook source={source!r} is unknown: use one of {SOURCES}')
        if interval is not None:
            if source != 'train':
                raise ValueError(f'CALSHook interval={interval} needs source="train": '
                                 'validation statistics exist only after a validation run')
            if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
                raise ValueError(f'CALSHook interval={interval!r} must be an int >= 1 or None')
        self.source = source
        self.interval = interval
        self.history_file = history_file
        self.plot_file = plot_file
        self._losses: dict = {}  # label -> (CALSLoss, ignore_index)
        self._class_names: list | None = None
        self._training = False
        self._resume_checked = False
        self._val_stats: dict = {}  # label -> per-image stats of this rank, in order
        self._pending: dict = {}  # label -> all-reduced training sums since the last update
        self._history: dict = {}  # label -> list of applied updates
        self._validated_at: list | None = None  # progress of the last validation update
        self._loaded_state: dict | None = None

    # Finding the losses --------------------------------------------------------------------
    @staticmethod
    def find_losses(model) -> dict:
        """Map a short label to ``(CALSLoss, ignore_index)`` for every CALSLoss in ``model``.

        The label is the owning decode head's name (``decode_head``, ``auxiliary_head``...),
        or the loss's module path if a head holds several; ``ignore_index`` is the head's.
        """
        if is_model_wrapper(model):
            model = model.module
        owners = {}
        for head_name, head in model.named_modules():
            if hasattr(head, 'loss_decode') and hasattr(head, 'ignore_index'):
                inside = [(name, m) for name, m in head.named_modules()
                          if isinstance(m, CALSLoss)]
                for name, loss in inside:
                    label = head_name if len(inside) == 1 else f'{head_name}.{name}'
                    owners[id(loss)] = (label, int(head.ignore_index))
        found = {}
        for name, module in model.named_modules():
            if isinstance(module, CALSLoss):
                label, ignore_index = owners.get(id(module), (name, 255))
                found[label] = (module, ignore_index)
        return found

    # Training lifecycle --------------------------------------------------------------------
    def _epoch_based(self, runner) -> bool:
        return isinstance(runner.train_loop, EpochBasedTrainLoop)

    def _progress(self, runner) -> list:
        if self._epoch_based(runner):
            return ['epoch', runner.epoch]
        return ['iter', runner.iter]

    def _updates_at_validation(self, runner) -> bool:
        if self.source == 'val':
            return True
        return self.interval is None and not self._epoch_based(runner)

    def before_train(self, runner) -> None:
        self._losses = self.find_losses(runner.model)
        if not self._losses:
            raise RuntimeError("CALSHook found no CALSLoss in the model: add dict(type='"
                               "CALSLoss', num_classes=...) to a decode head's loss_decode, "
                               'or remove the hook')
        if self.source == 'val' and runner.val_loop is None:
            raise RuntimeError("CALSHook(source='val') needs a validation loop: configure "
                               "val_dataloader, val_cfg and val_evaluator, or use source='train'")
        self._class_names = self._find_class_names(runner)
        self._training = True
        self._restore(runner)
        for loss, _ in self._losses.values():
            loss.collect_train_statistics = self.source == 'train'
            loss.pop_train_statistics()  # nothing from forwards before training counts
        if not any(self._history.values()):
            for label, (loss, _) in self._losses.items():
                self._history[label] = [self._record(loss, 0, runner.iter, runner.epoch)]
            self._write_history(runner)

    def _find_class_names(self, runner) -> list:
        num_classes = max(loss.num_classes for loss, _ in self._losses.values())
        try:
            names = list(runner.train_dataloader.dataset.metainfo.get('classes') or ())
        except (AttributeError, TypeError):
            names = []
        if len(names) != num_classes:
            names = [str(i) for i in range(num_classes)]
        return [str(name) for name in names]

    def before_train_epoch(self, runner) -> None:
        if self._resume_checked:
            return
        self._resume_checked = True
        progress = self._progress(runner)
        if (progress[1] > 0 and self._validates_here(runner, progress)
                and self._validated_at != progress):
            runner.logger.info(
                f'CALSHook: the checkpoint of {progress[0]} {progress[1]} was saved before '
                'that validation; running it now so that λ and ρ continue as in an '
                'uninterrupted run')
            runner.val_loop.run()

    def _validates_here(self, runner, progress) -> bool:
        """Whether the train loop validated (hence updated λ) at ``progress``."""
        if not self._updates_at_validation(runner) or runner.val_loop is None:
            return False
        loop = runner.train_loop
        last = loop.max_epochs if progress[0] == 'epoch' else loop.max_iters
        step = progress[1]
        return step >= loop.val_begin and (step % loop.val_interval == 0 or step == last)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.source != 'train':
            return
        self._reduce_train_statistics()
        if self.interval is not None and self.every_n_train_iters(runner, self.interval):
            self._update(runner, 'train', iteration=runner.iter + 1, epoch=runner.epoch)

    def after_train_epoch(self, runner) -> None:
        if self.source == 'train' and self.interval is None and self._epoch_based(runner):
            # runner.epoch counts the epochs finished only after this hook.
            self._update(runner, 'train', iteration=runner.iter, epoch=runner.epoch + 1)

    def after_train(self, runner) -> None:
        self._training = False
        for loss, _ in self._losses.values():
            loss.collect_train_statistics = False
        if is_main_process():
            self._plot(runner)

    # Validation ----------------------------------------------------------------------------
    def before_val_epoch(self, runner) -> None:
        self._val_stats = {label: [] for label in self._losses}

    def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not (self._training and self.source == 'val'):
            return
        for sample in outputs:
            if 'seg_logits' not in sample or 'gt_sem_seg' not in sample:
                raise RuntimeError("CALSHook(source='val') needs seg_logits and gt_sem_seg in "
                                   "the validation outputs (mmseg's SegDataSample); use "
                                   "source='train' with this model")
            logits = sample.seg_logits.data
            labels = sample.gt_sem_seg.data
            for label, (loss, ignore_index) in self._losses.items():
                g, h, count = loss.constraint_statistics(logits, labels, ignore_index)
                self._val_stats[label].append(torch.cat([g, h, count[None]]).cpu())

    def after_val_epoch(self, runner, metrics=None) -> None:
        if self._training and self._updates_at_validation(runner):
            self._update(runner, 'val', iteration=runner.iter, epoch=runner.epoch)
            self._validated_at = self._progress(runner)

    # Statistics ----------------------------------------------------------------------------
    def _reduce_train_statistics(self) -> None:
        labels = list(self._losses)
        local = torch.cat([torch.cat([g, h, c[None]]) for g, h, c in (
            self._losses[label][0].pop_train_statistics() for label in labels)])
        all_reduce(local, op='sum')
        local = local.cpu()
        sizes = [2 * self._losses[label][0].num_classes + 1 for label in labels]
        for label, part in zip(labels, local.split(sizes)):
            if label in self._pending:
                self._pending[label] += part
            else:
                self._pending[label] = part.clone()

    def _validation_sums(self, runner) -> dict:
        size = len(runner.val_loop.dataloader.dataset)
        parts = all_gather_object(self._val_stats)
        sums = {}
        for label, (loss, _) in self._losses.items():
            per_rank = [part.get(label, []) for part in parts]
            # The sampler deals images to ranks in turn: interleave to restore dataset order,
            # then drop the repeats it added to give every rank as many.
            ordered = [stats[i] for i in range(max(map(len, per_rank), default=0))
                       for stats in per_rank if i < len(stats)][:size]
            if ordered:
                sums[label] = torch.stack(ordered).sum(0)
            else:
                sums[label] = torch.zeros(2 * loss.num_classes + 1, dtype=torch.float64)
        return sums

    def _update(self, runner, mode: str, iteration: int, epoch: int) -> None:
        """Reduce the statistics, update every loss, log; ``mode`` prefixes the scalars."""
        if self.source == 'val':
            sums = self._validation_sums(runner)
        else:
            sums = self._pending
            self._pending = {}
        summary = []
        for label, (loss, _) in self._losses.items():
            num_classes = loss.num_classes
            total = sums.get(label, torch.zeros(2 * num_classes + 1, dtype=torch.float64))
            sum_g, sum_h, count = total.split([num_classes, num_classes, 1])
            applied = loss.update_multipliers(sum_g, sum_h, count.item(),
                                              class_names=self._class_names)
            if not applied:
                continue
            self._history[label].append(self._record(
                loss, pixels=int(count.item()), iteration=iteration, epoch=epoch))
            lam, rho = loss.lambda_, loss.rho
            for name, values in (('lambda', lam), ('rho', rho)):
                for stat, value in (('mean', values.mean()), ('min', values.min()),
                                    ('max', values.max())):
                    runner.message_hub.update_scalar(f'{mode}/cals/{label}/{name}_{stat}',
                                                     float(value))
            summary.append(f'{label}: λ mean {float(lam.mean()):.4g} [{float(lam.min()):.3g}, '
                           f'{float(lam.max()):.3g}], ρ mean {float(rho.mean()):.4g} '
                           f'[{float(rho.min()):.3g}, {float(rho.max()):.3g}]')
        if summary:
            where = f'epoch {epoch}' if self._epoch_based(runner) else f'iteration {iteration}'
            runner.logger.info(f'CALS update from {self.source} statistics at {where}: '
                               + '; '.join(summary))
            self._write_history(runner)

    # Records, files, checkpoints -----------------------------------------------------------
    @staticmethod
    def _record(loss: CALSLoss, pixels: int, iteration: int, epoch: int) -> dict:
        return {'update': int(loss.num_updates), 'iter': iteration, 'epoch': epoch,
                'pixels': pixels,
                'lambda': loss.lambda_.tolist(), 'rho': loss.rho.tolist()}

    def _write_history(self, runner) -> None:
        if not is_main_process():
            return
        # One line per update keeps the file readable with 19 classes and many updates.
        losses = ',\n'.join(
            f'  {json.dumps(label)}: [\n' + ',\n'.join(f'   {json.dumps(entry)}'
                                                      for entry in entries) + '\n  ]'
            for label, entries in self._history.items())
        text = (f'{{\n "source": {json.dumps(self.source)},\n'
                f' "classes": {json.dumps(self._class_names)},\n'
                f' "losses": {{\n{losses}\n }}\n}}\n')
        path = osp.join(runner.work_dir, self.history_file)
        with open(path + '.tmp', 'w') as f:
            f.write(text)
        # Replace atomically: a reader never sees a half-written history.
        os.replace(path + '.tmp', path)

    def _plot(self, runner) -> None:
        if not any(len(entries) > 1 for entries in self._history.values()):
            runner.logger.info('CALSHook: no multiplier update happened; no λ plot written')
            return
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        labels = list(self._history)
        fig = Figure(figsize=(9, 3.2 * len(labels)), constrained_layout=True)
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(labels), 1, squeeze=False)[:, 0]
        by_epoch = self._epoch_based(runner)
        for ax, label in zip(axes, labels):
            entries = self._history[label]
            steps = [entry['epoch' if by_epoch else 'iter'] for entry in entries]
            lam = torch.tensor([entry['lambda'] for entry in entries])
            # tab20 tells up to 20 classes apart (Cityscapes has 19); beyond, a gradient.
            num_classes = lam.shape[1]
            colors = (colormaps['tab20'].colors if num_classes <= 20 else
                      colormaps['viridis'](torch.linspace(0, 1, num_classes).numpy()))
            for k in range(num_classes):
                name = self._class_names[k] if k < len(self._class_names) else str(k)
                ax.plot(steps, lam[:, k].numpy(), marker='.', label=name, color=colors[k])
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_yscale('log')
            ax.set_title(f'CALS λ per class: {label}')
            ax.set_xlabel('epoch' if by_epoch else 'iteration')
            ax.set_ylabel('λ')
            ax.grid(True, which='both', alpha=0.3)
            ax.legend(fontsize='x-small', ncol=1, loc='center left', bbox_to_anchor=(1.0, 0.5))
        fig.savefig(osp.join(runner.work_dir, self.plot_file), dpi=100)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['cals_hook'] = {
            'history': copy.deepcopy(self._history),
            'validated_at': self._validated_at,
            'pending': {label: part.clone() for label, part in self._pending.items()},
        }

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._loaded_state = checkpoint.get('cals_hook')

    def _restore(self, runner) -> None:
        """Take the hook state of a resumed checkpoint; a new schedule starts afresh."""
        state, self._loaded_state = self._loaded_state, None
        if state is None or self._progress(runner)[1] == 0:
            return
        self._history = {label: entries for label, entries in state['history'].items()
                         if label in self._losses}
        self._validated_at = state['validated_at']
        self._pending = {label: part for label, part in state['pending'].items()
                         if label in self._losses}
