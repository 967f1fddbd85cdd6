"""DivergenceHook: the first non-finite total loss stops training (AMP: after its patience)."""
import types

import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from mmcals.hooks import DivergenceHook, TrainingDiverged


class _Logger:
    def __init__(self):
        self.warnings = []

    def warning(self, message):
        self.warnings.append(message)


def _runner(optim_wrapper, last_ckpt=None):
    hub = MessageHub.get_instance(f'divergence-{id(optim_wrapper)}')
    if last_ckpt:
        hub.update_info('last_ckpt', last_ckpt)
    return types.SimpleNamespace(iter=0, optim_wrapper=optim_wrapper, message_hub=hub,
                                 logger=_Logger())


def _step(hook, runner, loss):
    hook.after_train_iter(runner, 0, outputs={'loss': torch.tensor(loss)})
    runner.iter += 1


def test_first_non_finite_loss_stops_with_iteration_and_last_checkpoint():
    runner = _runner(object.__new__(OptimWrapper), last_ckpt='/wd/iter_2.pth')
    hook = DivergenceHook()
    for loss in (4.0, 3.5):
        _step(hook, runner, loss)
    with pytest.raises(TrainingDiverged) as error:
        _step(hook, runner, float('nan'))
    assert 'at iteration 3' in str(error.value) and '/wd/iter_2.pth' in str(error.value)
    assert '\n' not in str(error.value)


def test_amp_gives_the_scaler_its_patience_and_a_finite_loss_resets_it():
    # AmpOptimWrapper needs a GPU to construct; the hook only asks which kind it is.
    runner = _runner(object.__new__(AmpOptimWrapper))
    hook = DivergenceHook(amp_patience=3)
    for loss in (float('inf'), float('nan'), 2.0, float('inf'), float('inf')):
        _step(hook, runner, loss)  # never 3 in a row: the scaler recovered
    assert len(runner.logger.warnings) == 4
    with pytest.raises(TrainingDiverged, match='at iteration 6; no checkpoint was saved'):
        _step(hook, runner, float('nan'))


def test_arguments_are_checked():
    with pytest.raises(ValueError, match='amp_patience'):
        DivergenceHook(amp_patience=0)
