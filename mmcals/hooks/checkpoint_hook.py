"""SafeCheckpointHook: mmengine's CheckpointHook with writes that cannot lose progress."""
from __future__ import annotations

import contextlib
import copy
import glob
import os
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
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
      the checkpoint loads with ``torch.load(weights_only=True)``, and is rebuilt on loading.

    At the end of training, if a validation ran after the last checkpoint (mmengine saves
    before validating, and CALSHook updates λ/ρ in that validation), the last checkpoint is
    rewritten (atomically, same name) so that it holds the final multipliers.

    Remote ``out_dir`` backends keep mmengine's behaviour.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._last_save = None  # (filename, meta) of the last checkpoint written
        self._validated_after_save = False

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

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        restore_message_hub(checkpoint)

    def _write(self, runner, filename: str, meta: dict) -> None:
        """Write ``filename`` in ``out_dir`` through a ``.partial`` side file."""
        partial = f'{filename}.partial'
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
