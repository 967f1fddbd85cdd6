"""CALSHook: the class-adaptive multiplier updates of CALS (docs/method.md §3) and the
constraint diagnostics that show whether CALS is acting (§5).

Data path: per-class :class:`~mmcals.losses.ConstraintStats` come out of
:class:`~mmcals.losses.CALSLoss` (from the validation outputs, or gathered by its training
forwards), are summed across ranks here, and go back into each loss through
:meth:`CALSLoss.update_multipliers`; their diagnostics go to the message hub, the history
file and the plot.
"""
from __future__ import annotations

import bisect
import copy
import json
import math
import os
import os.path as osp

import torch
from mmengine.dist import all_reduce, get_rank, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import EpochBasedTrainLoop
from mmseg.registry import HOOKS

from ..losses.cals import CALSLoss
from ..losses.constraint_stats import ConstraintStats

SOURCES = ('val', 'train')
LOGIT_GAPS_TOOL = 'tools/analysis/logit_gaps.py'


def _json_floats(value):
    """NaN and infinities become null: JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_json_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_floats(v) for k, v in value.items()}
    return value


@HOOKS.register_module()
class CALSHook(Hook):
    """Update the λ and ρ of every :class:`CALSLoss` in the model (docs/method.md §3).

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

    Under distributed training every rank computes the same λ and ρ, those of one process
    over the union of the data up to float64 rounding of the sums (relative ~1e-16): each
    rank sums its statistics (validation: per image, leaving out the images the sampler
    repeated to even out the ranks; training: per iteration) and the sums are all-reduced.
    Training sums are all-reduced after every iteration, so that a checkpoint taken between
    updates holds them whole. Counts (pixels, pairs, histogram bins) are exact.

    λ and ρ live in the losses' buffers, so checkpoints carry them. The hook adds its own
    state (history, pending training sums, the inactivity count) to checkpoints under
    ``'cals_hook'``. mmengine saves a checkpoint *before* the validation of the same
    iteration; a run resumed from it runs that validation first, so λ and ρ continue exactly
    as without the interruption.

    At each update, per loss (``<label>``: its head) and ``<mode>`` (``val`` or ``train``),
    the message hub gets ``<mode>/cals/<label>/{lambda,rho}_{mean,min,max}`` and the
    diagnostics of docs/method.md §5 pooled over classes,
    ``<mode>/cals/<label>/{acting_share,violating_share,gap_p50,gap_p90,gap_p99}`` and
    ``.../acting_share_{min,max}`` over classes (logged with the validation metrics, or with
    the training log for training-time updates; hence in ``vis_data/scalars.json``,
    TensorBoard and the other visualizer backends). Per-class λ, ρ and diagnostics are
    written to ``<work_dir>/<history_file>`` as JSON (one line per update), and at the end of
    training λ and the acting share per class over the updates are plotted to
    ``<work_dir>/<plot_file>``. After ``inactive_updates`` consecutive updates in which fewer
    than ``inactive_share`` of the pairs of every class were acted on, one warning says that
    CALS is inactive, with the measured gaps; the hook never changes the margin.

    Args:
        source (str): ``'val'`` or ``'train'``. Default: ``'val'``.
        interval (int, optional): With ``source='train'``, update every this many training
            iterations instead. Default: None.
        history_file (str): JSON history, relative to the work dir. Default:
            ``'cals_history.json'``.
        plot_file (str): PNG of λ and the acting share per class over updates, relative to
            the work dir. Default: ``'cals_lambda.png'``.
        inactive_updates (int): Consecutive inactive updates before the warning. Default: 3.
        inactive_share (float): An update is inactive for a loss when the acting share of
            every class is below this. Default: 1e-3.
    """

    priority = 'NORMAL'  # before LoggerHook (logs our scalars) and CheckpointHook (saves λ)

    def __init__(self,
                 source: str = 'val',
                 interval: int | None = None,
                 history_file: str = 'cals_history.json',
                 plot_file: str = 'cals_lambda.png',
                 inactive_updates: int = 3,
                 inactive_share: float = 1e-3):
        if source not in SOURCES:
            raise ValueError(f'CALSHook source={source!r} is unknown: use one of {SOURCES}')
        if interval is not None:
            if source != 'train':
                raise ValueError(f'CALSHook interval={interval} needs source="train": '
                                 'validation statistics exist only after a validation run')
            if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
                raise ValueError(f'CALSHook interval={interval!r} must be an int >= 1 or None')
        if (isinstance(inactive_updates, bool) or not isinstance(inactive_updates, int)
                or inactive_updates < 1):
            raise ValueError(f'CALSHook inactive_updates={inactive_updates!r} must be an int '
                             '>= 1')
        if not 0 < inactive_share <= 1:
            raise ValueError(f'CALSHook inactive_share={inactive_share!r} must lie in (0, 1]')
        self.source = source
        self.interval = interval
        self.history_file = history_file
        self.plot_file = plot_file
        self.inactive_updates = inactive_updates
        self.inactive_share = float(inactive_share)
        self._losses: dict = {}  # label -> (CALSLoss, ignore_index)
        self._class_names: list | None = None
        self._training = False
        self._resume_checked = False
        self._val_stats: dict = {}  # label -> this rank's ConstraintStats of this validation
        self._val_seen = 0  # validation samples this rank has seen in this run
        self._pending: dict = {}  # label -> all-reduced training ConstraintStats since update
        self._history: dict = {}  # label -> list of applied updates
        self._validated_at: list | None = None  # progress of the last validation update
        self._inactive_streak: dict = {}  # label -> consecutive inactive updates
        self._warned_inactive = False
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
        """Find the losses, check the setup, take a resumed state, write the initial λ/ρ.

        Runs after mmengine has loaded a resumed checkpoint (``after_load_checkpoint`` has
        stashed the hook state), so the history continues rather than restarting. Switches
        the losses' training-statistics collection on for ``source='train'`` and drops what
        forwards before training gathered.
        """
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
        """On the first epoch of a resumed run, redo a validation the checkpoint predates.

        mmengine's CheckpointHook saves in ``after_train_iter``/``after_train_epoch``, before
        the train loop validates at the same step; a checkpoint of a validation step thus
        holds the λ of the update before. Running that validation now (and its update) makes
        the resumed run continue exactly like the uninterrupted one.
        """
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
        """Whether the train loop validated (hence updated λ) at ``progress``.

        mmengine decides this inline in ``IterBasedTrainLoop.run``/``EpochBasedTrainLoop.run``
        and offers no predicate for it; this is the same test on the loop's public
        attributes, ``dynamic_intervals`` included.
        """
        if not self._updates_at_validation(runner) or runner.val_loop is None:
            return False
        loop = runner.train_loop
        last = loop.max_epochs if progress[0] == 'epoch' else loop.max_iters
        step = progress[1]
        # After finishing step `step`, the loop's `_decide_current_val_interval` looks up
        # `step + 1` in its milestones.
        interval = loop.dynamic_intervals[bisect.bisect(loop.dynamic_milestones, step + 1) - 1]
        return step >= loop.val_begin and (step % interval == 0 or step == last)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        """``source='train'``: all-reduce this iteration's statistics; update every ``interval``.

        Reducing every iteration (a few KiB per loss) keeps the pending sums identical on all
        ranks, so a checkpoint of any rank between updates holds them whole.
        """
        if self.source != 'train':
            return
        self._reduce_train_statistics()
        if self.interval is not None and self.every_n_train_iters(runner, self.interval):
            self._update(runner, 'train', iteration=runner.iter + 1, epoch=runner.epoch)

    def after_train_epoch(self, runner) -> None:
        """``source='train'`` with an epoch-based loop and no ``interval``: update now."""
        if self.source == 'train' and self.interval is None and self._epoch_based(runner):
            # runner.epoch counts the epochs finished only after this hook.
            self._update(runner, 'train', iteration=runner.iter, epoch=runner.epoch + 1)

    def after_train(self, runner) -> None:
        """Stop statistics collection in the losses and plot λ and the acting share."""
        self._training = False
        for loss, _ in self._losses.values():
            loss.collect_train_statistics = False
        if is_main_process():
            self._plot(runner)

    # Validation ----------------------------------------------------------------------------
    def before_val_epoch(self, runner) -> None:
        """Start this validation's statistics from zero."""
        self._val_stats = {label: ConstraintStats.zeros(loss.num_classes)
                           for label, (loss, _) in self._losses.items()}
        self._val_seen = 0

    def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        """``source='val'`` during training: add each output image's statistics.

        The statistics come from the outputs the validation computed anyway (no second
        forward). Images the sampler repeated to give every rank as many are left out, so the
        sums over ranks are those of the dataset once.
        """
        if not (self._training and self.source == 'val'):
            return
        size = len(runner.val_loop.dataloader.dataset)
        world, rank = get_world_size(), get_rank()
        for sample in outputs:
            if 'seg_logits' not in sample or 'gt_sem_seg' not in sample:
                raise RuntimeError("CALSHook(source='val') needs seg_logits and gt_sem_seg in "
                                   "the validation outputs (mmseg's SegDataSample); use "
                                   "source='train' with this model")
            # mmengine's DefaultSampler deals the (padded) index list to ranks in turn: this
            # rank's j-th sample is item j·world + rank, a repeat from `size` on.
            position = self._val_seen * world + rank
            self._val_seen += 1
            if position >= size:
                continue
            logits = sample.seg_logits.data
            labels = sample.gt_sem_seg.data
            for label, (loss, ignore_index) in self._losses.items():
                stats = loss.constraint_statistics(logits, labels, ignore_index).to('cpu')
                self._val_stats[label] = self._val_stats[label] + stats

    def after_val_epoch(self, runner, metrics=None) -> None:
        """Update the multipliers from this validation (or the pending training sums)."""
        if self._training and self._updates_at_validation(runner):
            self._update(runner, 'val', iteration=runner.iter, epoch=runner.epoch)
            self._validated_at = self._progress(runner)

    # Statistics ----------------------------------------------------------------------------
    def _all_reduce(self, stats: dict) -> dict:
        """Sum ``{label: ConstraintStats}`` over ranks, in one all_reduce."""
        labels = list(self._losses)
        flat = torch.cat([stats[label].flatten() for label in labels])
        device = next(iter(self._losses.values()))[0].lambda_.device
        flat = flat.to(device)
        all_reduce(flat, op='sum')
        sizes = [ConstraintStats.flat_size(self._losses[label][0].num_classes)
                 for label in labels]
        return {label: ConstraintStats.unflatten(part, self._losses[label][0].num_classes)
                for label, part in zip(labels, flat.cpu().split(sizes))}

    def _reduce_train_statistics(self) -> None:
        local = {label: loss.pop_train_statistics()
                 for label, (loss, _) in self._losses.items()}
        for label, part in self._all_reduce(local).items():
            self._pending[label] = (self._pending[label] + part if label in self._pending
                                    else part)

    def _update(self, runner, mode: str, iteration: int, epoch: int) -> None:
        """Reduce the statistics, update every loss, log; ``mode`` prefixes the scalars."""
        if self.source == 'val':
            sums = self._all_reduce(self._val_stats)
        else:
            sums, self._pending = self._pending, {}
        summary = []
        for label, (loss, _) in self._losses.items():
            stats = sums.get(label) or ConstraintStats.zeros(loss.num_classes)
            if not loss.update_multipliers(stats, class_names=self._class_names):
                continue
            diagnostics = stats.diagnostics()
            self._history[label].append(self._record(
                loss, pixels=int(stats.count), iteration=iteration, epoch=epoch,
                diagnostics=diagnostics))
            self._log_scalars(runner, f'{mode}/cals/{label}', loss, diagnostics)
            lam, rho = loss.lambda_, loss.rho
            pooled = diagnostics['all']
            summary.append(f'{label}: λ mean {float(lam.mean()):.4g} [{float(lam.min()):.3g}, '
                           f'{float(lam.max()):.3g}], ρ mean {float(rho.mean()):.4g} '
                           f'[{float(rho.min()):.3g}, {float(rho.max()):.3g}], acting '
                           f'{pooled["acting_share"]:.3%} of pairs, gap p50/p90/p99 '
                           f'{pooled["gap_p50"]:.3g}/{pooled["gap_p90"]:.3g}/'
                           f'{pooled["gap_p99"]:.3g} (margin {loss.margin:g})')
            self._check_activity(runner, label, loss, diagnostics)
        if summary:
            where = f'epoch {epoch}' if self._epoch_based(runner) else f'iteration {iteration}'
            runner.logger.info(f'CALS update from {self.source} statistics at {where}: '
                               + '; '.join(summary))
            self._write_history(runner)

    @staticmethod
    def _log_scalars(runner, prefix: str, loss: CALSLoss, diagnostics: dict) -> None:
        for name, values in (('lambda', loss.lambda_), ('rho', loss.rho)):
            for stat, value in (('mean', values.mean()), ('min', values.min()),
                                ('max', values.max())):
                runner.message_hub.update_scalar(f'{prefix}/{name}_{stat}', float(value))
        pooled = diagnostics['all']
        for key in ('acting_share', 'violating_share', 'gap_p50', 'gap_p90', 'gap_p99'):
            if math.isfinite(pooled[key]):  # NaN when no pair was counted
                runner.message_hub.update_scalar(f'{prefix}/{key}', pooled[key])
        acting = [v for v in diagnostics['acting_share'] if math.isfinite(v)]
        if acting:
            runner.message_hub.update_scalar(f'{prefix}/acting_share_min', min(acting))
            runner.message_hub.update_scalar(f'{prefix}/acting_share_max', max(acting))

    def _check_activity(self, runner, label: str, loss: CALSLoss, diagnostics: dict) -> None:
        """Count inactive updates; warn once per run when CALS has stopped acting."""
        acting = [v for v in diagnostics['acting_share'] if math.isfinite(v)]
        inactive = bool(acting) and max(acting) < self.inactive_share
        streak = self._inactive_streak.get(label, 0) + 1 if inactive else 0
        self._inactive_streak[label] = streak
        if self._warned_inactive or streak < self.inactive_updates:
            return
        self._warned_inactive = True
        pooled = diagnostics['all']
        runner.logger.warning(
            f'CALS is inactive for {label}: in {streak} consecutive updates fewer than '
            f'{self.inactive_share:.2%} of the (pixel, class) pairs of every class got a '
            f'penalty gradient beyond the λ floor (at most {max(acting):.3%}), so the loss '
            'trains like its other terms alone. Logit gaps d = z_a - z_k at the last update: '
            f'p50 {pooled["gap_p50"]:.3g}, p90 {pooled["gap_p90"]:.3g}, p99 '
            f'{pooled["gap_p99"]:.3g}, against margin={loss.margin:g}; 1% of the pairs '
            f'would violate a margin of {pooled["margin_1pct"]:.3g}, 10% one of '
            f'{pooled["margin_10pct"]:.3g}. The margin is left as configured: to choose '
            f'one, measure a trained model on a calibration split with {LOGIT_GAPS_TOOL}.')

    # Records, files, checkpoints -----------------------------------------------------------
    @staticmethod
    def _record(loss: CALSLoss, pixels: int, iteration: int, epoch: int,
                diagnostics: dict | None = None) -> dict:
        entry = {'update': int(loss.num_updates), 'iter': iteration, 'epoch': epoch,
                 'pixels': pixels,
                 'lambda': loss.lambda_.tolist(), 'rho': loss.rho.tolist()}
        if diagnostics is not None:
            entry.update(_json_floats(diagnostics))
        return entry

    def _write_history(self, runner) -> None:
        if not is_main_process():
            return
        # One line per update keeps the file readable with 19 classes and many updates.
        losses = ',\n'.join(
            f'  {json.dumps(label)}: [\n' + ',\n'.join(
                f'   {json.dumps(entry, allow_nan=False)}' for entry in entries) + '\n  ]'
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
        fig = Figure(figsize=(15, 3.2 * len(labels)), constrained_layout=True)
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(labels), 2, squeeze=False, sharex='row')
        by_epoch = self._epoch_based(runner)
        unit = 'epoch' if by_epoch else 'iteration'
        for (lam_ax, act_ax), label in zip(axes, labels):
            entries = self._history[label]
            steps = [entry['epoch' if by_epoch else 'iter'] for entry in entries]
            lam = torch.tensor([entry['lambda'] for entry in entries])
            updates = [entry for entry in entries if 'acting_share' in entry]
            update_steps = [entry['epoch' if by_epoch else 'iter'] for entry in updates]
            acting = torch.tensor([[math.nan if v is None else v for v in entry['acting_share']]
                                   for entry in updates], dtype=torch.float64)
            # tab20 tells up to 20 classes apart (Cityscapes has 19); beyond, a gradient.
            num_classes = lam.shape[1]
            colors = (colormaps['tab20'].colors if num_classes <= 20 else
                      colormaps['viridis'](torch.linspace(0, 1, num_classes).numpy()))
            for k in range(num_classes):
                name = self._class_names[k] if k < len(self._class_names) else str(k)
                lam_ax.plot(steps, lam[:, k].numpy(), marker='.', label=name, color=colors[k])
                if updates:
                    act_ax.plot(update_steps, 100 * acting[:, k].numpy(), marker='.',
                                color=colors[k])
            lam_ax.set_yscale('log')
            lam_ax.set_title(f'CALS λ per class: {label}')
            lam_ax.set_ylabel('λ')
            act_ax.axhline(100 * self.inactive_share, color='grey', linestyle='--',
                           linewidth=1, label='inactive below')
            act_ax.set_title(f"pairs CALS acts on (P' > λ_min) per class: {label}")
            act_ax.set_ylabel('acting share (%)')
            act_ax.set_ylim(bottom=0)
            for ax in (lam_ax, act_ax):
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_xlabel(unit)
                ax.grid(True, which='both', alpha=0.3)
            act_ax.legend(fontsize='x-small', loc='upper right')
            lam_ax.legend(fontsize='x-small', ncol=1, loc='center right',
                          bbox_to_anchor=(-0.12, 0.5))
        fig.savefig(osp.join(runner.work_dir, self.plot_file), dpi=100)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Put the hook's state (history, pending training sums...) into the checkpoint.

        λ and ρ are already in it, as the losses' buffers. The pending sums are stored as
        flat float64 tensors (``ConstraintStats.flatten``), loadable with ``weights_only``.
        """
        checkpoint['cals_hook'] = {
            'history': copy.deepcopy(self._history),
            'validated_at': self._validated_at,
            'pending': {label: stats.flatten() for label, stats in self._pending.items()},
            'inactive_streak': dict(self._inactive_streak),
            'warned_inactive': self._warned_inactive,
        }

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Keep the hook state of a loaded checkpoint until ``before_train`` knows the losses.

        mmengine loads a resumed checkpoint before ``before_train``; whether the state
        applies (a resumed schedule) is decided there, in :meth:`_restore`.
        """
        self._loaded_state = checkpoint.get('cals_hook')

    def _restore(self, runner) -> None:
        """Take the hook state of a resumed checkpoint; a new schedule starts afresh."""
        state, self._loaded_state = self._loaded_state, None
        if state is None or self._progress(runner)[1] == 0:
            return
        self._history = {label: entries for label, entries in state['history'].items()
                         if label in self._losses}
        self._validated_at = state['validated_at']
        self._pending = {
            label: ConstraintStats.unflatten(flat, self._losses[label][0].num_classes)
            for label, flat in state['pending'].items() if label in self._losses}
        self._inactive_streak = {label: streak for label, streak in
                                 state.get('inactive_streak', {}).items()
                                 if label in self._losses}
        self._warned_inactive = bool(state.get('warned_inactive', False))
