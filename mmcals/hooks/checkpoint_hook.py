"""SafeCheckpointHook: mmengine's CheckpointHook with writes that cannot lose progress."""
from __future__ import annotations

import contextlib
import copy
import glob
import os
import os.path as osp

import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size, is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.runner import EpochBasedTrainLoop
from mmseg.registry import HOOKS

from ..checkpoint import plain_message_hub, restore_message_hub


@contextlib.contextmanager
def _replaced(obj, name: str, value):
    """Set ``obj.name = value`` for the duration of the block, then restore it exactly."""
    missing = object()
    previous = vars(obj).get(name, missing)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if previous is missing:
            delattr(obj, name)
        else:
            setattr(obj, name, previous)


def _rng_state() -> dict:
    """torch's global generators (CPU, and the current CUDA device's once CUDA is in use)."""
    state = {'cpu': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state['cpu'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's :class:`~mmengine.hooks.CheckpointHook`, made safe to interrupt and to load.

    Takes every argument of ``CheckpointHook`` and changes five things for local folders:

    - a checkpoint is written to ``<name>.partial`` and renamed when complete, so a killed
      run never leaves a truncated ``iter_N.pth``; ``*.partial`` files of a killed run are
      removed when training starts again;
    - with ``max_keep_ckpts``, outdated checkpoints are removed only *after* the new one is
      complete and ``last_checkpoint`` names it (mmengine removes them before writing, so a
      run killed during the write could be left with no checkpoint);
    - ``last_checkpoint`` is replaced atomically and always names a complete file;
    - with ``save_best``, a new ``best_*`` checkpoint is written the same way, and the previous
      best is removed only once the new one is complete (mmengine removes it first);
    - the message hub is stored in plain types (``mmcals.checkpoint.plain_message_hub``), so
      the checkpoint loads with ``torch.load(weights_only=True)``, and is rebuilt on loading;
    - the state of torch's global random generators (CPU and CUDA, every rank's) goes into
      the checkpoint, and a resumed run takes it up again just before its first iteration
      (its first epoch, epoch-based), so the model's randomness (dropout) continues as in the
      uninterrupted run. mmengine keeps neither, and draws from the generator when it starts
      a data loader, so a resumed run used other dropout masks. For that, a validation
      during training leaves the training's generators as it found them. With the data
      loaded in worker processes (``num_workers > 0``; their seeds come from the config's)
      a resumed run is then bit-identical to the uninterrupted one; with ``num_workers=0``
      the data augmentation draws from the same generators and is not replayed exactly.

    At the end of training, if a validation ran after the last checkpoint (mmengine saves
    before validating, and CALSHook updates λ/ρ in that validation), the last checkpoint is
    rewritten (atomically, same name) so that it holds the final multipliers.

    Remote ``out_dir`` backends keep mmengine's behaviour.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._last_save = None  # (filename, meta) of the last checkpoint written
        self._validated_after_save = False
        self._rng_before_val = None  # the generators' state when a validation began
        self._resumed_rng = None  # (states per rank, iteration) of a loaded checkpoint
        self._rng_for_save = None  # every rank's state, for the checkpoint being saved

    def _local(self) -> bool:
        return isinstance(getattr(self, 'file_backend', None), LocalBackend)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if self._local() and is_main_process():
            for stale in sorted(glob.glob(osp.join(glob.escape(self.out_dir), '*.partial'))):
                os.remove(stale)
                runner.logger.warning(f'Removed {stale}: a checkpoint that an interrupted run '
                                      'did not finish writing')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if isinstance(checkpoint.get('message_hub'), dict):
            checkpoint['message_hub'] = plain_message_hub(checkpoint['message_hub'])
        # One entry per rank, gathered by every rank before the save (only the main process
        # runs this method); saved another way (a remote backend): this process's own.
        states, self._rng_for_save = self._rng_for_save, None
        checkpoint['rng_state'] = states if states is not None else [self._training_rng()]

    def _training_rng(self) -> dict:
        """The generators' state the training goes on with (in a validation: its start's)."""
        return self._rng_before_val if self._rng_before_val is not None else _rng_state()

    def _gather_rng(self) -> None:
        """Every rank's state, for the checkpoint about to be saved (called on every rank)."""
        self._rng_for_save = all_gather_object(self._training_rng())

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        restore_message_hub(checkpoint)
        states = checkpoint.get('rng_state')
        meta = checkpoint.get('meta') or {}
        if isinstance(states, list) and isinstance(meta.get('iter'), int):
            self._resumed_rng = (states, meta['iter'])

    def _take_resumed_rng(self, runner) -> None:
        """On resuming, set the generators to the checkpoint's (``load_from`` starts at
        iteration 0, a resume at the checkpoint's iteration: only the latter takes them)."""
        states, iteration = self._resumed_rng
        self._resumed_rng = None
        if iteration != runner.iter or iteration == 0:
            return
        if len(states) != get_world_size():
            runner.logger.warning(
                f'The checkpoint holds the random generators of {len(states)} ranks and this '
                f'run has {get_world_size()}: dropout continues from fresh generators, not '
                'bit-identically to the run that wrote it')
            return
        _set_rng_state(states[get_rank()])

    def before_train_epoch(self, runner) -> None:
        super().before_train_epoch(runner)
        # Epoch-based: before the epoch's data loader starts (it draws from the generator).
        if self._resumed_rng is not None and isinstance(runner.train_loop, EpochBasedTrainLoop):
            self._take_resumed_rng(runner)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        super().before_train_iter(runner, batch_idx, data_batch)
        # Iteration-based: after mmengine's pass over the batches already trained.
        if self._resumed_rng is not None:
            self._take_resumed_rng(runner)

    def before_val(self, runner) -> None:
        super().before_val(runner)
        self._rng_before_val = _rng_state()

    def after_val(self, runner) -> None:
        super().after_val(runner)
        if self._rng_before_val is not None:
            _set_rng_state(self._rng_before_val)
            self._rng_before_val = None

    def _write(self, runner, filename: str, meta: dict) -> None:
        """Write ``filename`` in ``out_dir`` through a ``.partial`` side file."""
        partial = f'{filename}.partial'
        self._gather_rng()
        runner.save_checkpoint(
            self.out_dir, partial, self.file_client_args, save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler, meta=copy.deepcopy(meta),
            by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if is_main_process():
            os.replace(osp.join(self.out_dir, partial), osp.join(self.out_dir, filename))

    def _save_checkpoint_with_step(self, runner, step, meta):
        if not self._local():
            return super()._save_checkpoint_with_step(runner, step, meta)
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = osp.join(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        self._write(runner, filename, meta)
        self._last_save = (filename, copy.deepcopy(meta))
        self._validated_after_save = False
        if not is_main_process():
            return
        pointer = osp.join(runner.work_dir, 'last_checkpoint')
        with open(f'{pointer}.partial', 'w') as f:
            f.write(self.last_ckpt)
        os.replace(f'{pointer}.partial', pointer)
        for old in outdated:
            path = osp.join(self.out_dir, self.filename_tmpl.format(old))
            if osp.isfile(path):
                os.remove(path)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        if not (self.save_best and self._local()):
            return super()._save_best_checkpoint(runner, metrics)
        # mmengine's method picks the new best and its name; only its two file operations
        # change, for the duration of the call: the previous best's removal waits until the
        # new best is complete, and the new best goes through a .partial file.
        step = runner.epoch if self.by_epoch else runner.iter
        names = {f'best_{key}_{self.filename_tmpl.format(step)}'.replace('/', '_')
                 for key in self.key_indicators}
        backend, save = self.file_backend, runner.save_checkpoint
        outdated = []  # the previous best, whose removal mmengine asks for before the save

        def save_best(out_dir, filename, *args, **kwargs):
            self._gather_rng()
            if filename not in names:
                return save(out_dir, filename, *args, **kwargs)
            save(out_dir, f'{filename}.partial', *args, **kwargs)
            if is_main_process():
                os.replace(osp.join(out_dir, f'{filename}.partial'), osp.join(out_dir, filename))
                for old in outdated:
                    if osp.isfile(old) and osp.abspath(old) != osp.abspath(
                            osp.join(out_dir, filename)):
                        os.remove(old)
            outdated.clear()

        with _replaced(backend, 'remove', outdated.append), \
                _replaced(runner, 'save_checkpoint', save_best):
            super()._save_best_checkpoint(runner, metrics)

    def after_val_epoch(self, runner, metrics):
        super().after_val_epoch(runner, metrics)
        if self._last_save is not None:
            self._validated_after_save = True

    def after_train(self, runner) -> None:
        if self._local() and self._last_save is not None and self._validated_after_save:
            filename, meta = self._last_save
            runner.logger.info(f'Rewriting {filename} with the state after the last validation '
                               '(final CALS multipliers)')
            self._write(runner, filename, meta)
            self._validated_after_save = False
        super().after_train(runner)
