"""DivergenceHook: stop training at the first non-finite total loss."""
from __future__ import annotations

import math

import torch
from mmengine.hooks import Hook
from mmengine.optim import AmpOptimWrapper
from mmseg.registry import HOOKS


class TrainingDiverged(RuntimeError):
    """The total training loss became non-finite; the message is one line."""


@HOOKS.register_module()
class DivergenceHook(Hook):
    """Stop training when the total loss is NaN or infinite, naming the last good checkpoint.

    Without it, a diverged run goes on to the end with ``loss: nan`` in the log and
    plausible-looking validation numbers. Under mixed precision (``AmpOptimWrapper``), a
    non-finite loss is first left to the gradient scaler, which skips that step and lowers the
    scale; the run stops only when ``amp_patience`` iterations in a row were non-finite.

    Runs after each training iteration before CALSHook and the checkpoint hook, so no
    checkpoint of a diverged model is written.

    Args:
        amp_patience (int): Consecutive non-finite iterations tolerated under AMP. Default: 5.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, amp_patience: int = 5):
        if isinstance(amp_patience, bool) or not isinstance(amp_patience, int) \
                or amp_patience < 1:
            raise ValueError(f'DivergenceHook amp_patience={amp_patience!r} must be an int >= 1')
        self.amp_patience = amp_patience
        self._bad_in_a_row = 0

    @staticmethod
    def _total_loss(outputs):
        if not isinstance(outputs, dict) or 'loss' not in outputs:
            return None
        loss = outputs['loss']
        return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        loss = self._total_loss(outputs)
        if loss is None or math.isfinite(loss):
            self._bad_in_a_row = 0
            return
        self._bad_in_a_row += 1
        iteration = runner.iter + 1  # as the log counts: Iter(train) [iteration/max]
        if isinstance(runner.optim_wrapper, AmpOptimWrapper) \
                and self._bad_in_a_row < self.amp_patience:
            runner.logger.warning(f'Total loss is {loss} at iteration {iteration}: the AMP '
                                  'scaler skips this step')
            return
        last = runner.message_hub.get_info('last_ckpt')
        where = (f'the last good checkpoint is {last}' if last
                 else 'no checkpoint was saved before it')
        raise TrainingDiverged(
            f'training diverged: the total loss is {loss} at iteration {iteration}; {where} '
            '(lower the learning rate, or check the data, and resume or restart)')
