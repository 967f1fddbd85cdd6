"""mmcals.checkpoint: safe loading, plain message hub, and fitting a checkpoint to a model."""
import os
import pickle

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub

from mmcals.checkpoint import (
    CheckpointError,
    fit_to_model,
    load_checkpoint_safely,
    plain_message_hub,
    restore_message_hub,
)


class _Marker:
    """Unpickling this creates ``path``: a stand-in for code a hostile checkpoint runs."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def write_malicious_checkpoint(path, marker, base=None):
    """A checkpoint (``base`` or a tiny state dict) that creates ``marker`` when unpickled."""
    checkpoint = dict(base or {'state_dict': {'w': torch.ones(2)}})
    checkpoint['payload'] = _Marker(marker)
    torch.save(checkpoint, path)


def _hub_state():
    hub = MessageHub.get_instance('checkpoint-test')
    for value in (1.5, 2.25, 0.1):
        hub.update_scalar('train/loss', value)
    hub.update_scalar('train/lr', np.float32(0.01))
    hub.update_info('eta', np.float64(12.5))
    hub.update_info('iter', 3)
    return hub.state_dict()


def test_plain_message_hub_loads_weights_only_and_rebuilds_bit_identically(tmp_path):
    state = _hub_state()
    path = tmp_path / 'ckpt.pth'
    torch.save({'message_hub': state}, path)
    with pytest.raises(pickle.UnpicklingError):  # what mmengine's own format needs
        torch.load(path, weights_only=True)
    torch.save({'message_hub': plain_message_hub(state)}, path)
    loaded = torch.load(path, weights_only=True)  # no allow-list at all
    restore_message_hub(loaded)
    for key, buffer in state['log_scalars'].items():
        rebuilt = loaded['message_hub']['log_scalars'][key]
        assert isinstance(rebuilt, HistoryBuffer) and rebuilt.max_length == buffer.max_length
        for old, new in zip(buffer.data, rebuilt.data):
            assert old.dtype == new.dtype and np.array_equal(old, new)
    assert loaded['message_hub']['runtime_info']['eta'] == 12.5
    hub = MessageHub.get_instance('checkpoint-test-restored')
    hub.load_state_dict(loaded['message_hub'])
    assert hub.get_scalar('train/loss').mean() == pytest.approx(np.mean([1.5, 2.25, 0.1]))


def test_numpy_data_loads_without_trust(tmp_path):
    path = tmp_path / 'np.pth'
    torch.save({'a': np.arange(6, dtype=np.int16).reshape(2, 3), 's': np.float64(0.5),
                'd': np.dtype('float32')}, path)
    loaded = load_checkpoint_safely(path)
    assert loaded['a'].dtype == np.int16 and loaded['a'].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert loaded['s'] == 0.5 and loaded['d'] == np.dtype('float32')


def test_code_in_a_checkpoint_is_refused_unless_trusted(tmp_path, monkeypatch):
    path, marker = tmp_path / 'evil.pth', tmp_path / 'marker'
    write_malicious_checkpoint(path, marker)
    monkeypatch.delenv('MMCALS_TRUST_CHECKPOINTS', raising=False)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint_safely(path)
    message = str(error.value)
    assert '\n' not in message and str(path) in message and 'os.makedirs' in message
    assert '--trust-checkpoint' in message and 'MMCALS_TRUST_CHECKPOINTS=1' in message
    assert not marker.exists()
    # An old mmengine checkpoint (pickled HistoryBuffer, via builtins.getattr) is refused too.
    hub_path = tmp_path / 'old_mmengine.pth'
    torch.save({'message_hub': _hub_state()}, hub_path)
    with pytest.raises(CheckpointError, match='full unpickling'):
        load_checkpoint_safely(hub_path)
    monkeypatch.setenv('MMCALS_TRUST_CHECKPOINTS', '1')
    load_checkpoint_safely(path)
    assert marker.exists()  # proves the refusal above is what kept the code from running


@pytest.mark.parametrize('damage', ['empty', 'truncated'])
def test_damaged_checkpoints_give_one_line(tmp_path, damage):
    path = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {'w': torch.randn(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(b'' if damage == 'empty' else data[:len(data) // 2])
    with pytest.raises(CheckpointError) as error:
        load_checkpoint_safely(path)
    assert '\n' not in str(error.value) and str(path) in str(error.value)
    assert ('empty' if damage == 'empty' else 'truncated') in str(error.value)


def test_fit_to_model_names_the_first_offending_keys():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 19, 1), torch.nn.BatchNorm2d(19))
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 10, 1), torch.nn.BatchNorm2d(10))
    state = {'state_dict': {f'module.{k}': v for k, v in other.state_dict().items()}}
    with pytest.raises(CheckpointError) as error:
        fit_to_model(model, state, 'ten.pth', allow_partial=False)
    message = str(error.value)
    assert '0.weight is 10x3x1x1 in the checkpoint but 19x3x1x1 in the model' in message
    assert '--allow-partial' in message and 'ten.pth' in message
    logged = []
    kept = fit_to_model(model, state, 'ten.pth', allow_partial=True, log=logged.append)
    assert list(kept) == ['1.num_batches_tracked']  # the only tensor whose shape fits
    assert len(logged) == 1 and '0.weight' in logged[0] and '1.running_var' in logged[0]
    exact = fit_to_model(model, {'state_dict': model.state_dict()}, 'same.pth', False)
    assert exact.keys() == model.state_dict().keys()


class _Runner:
    """What SafeCheckpointHook's generator handling reads of a runner."""

    def __init__(self, iteration):
        self.iter = iteration
        self.train_loop = None
        self.warnings = []
        self.logger = type('Logger', (), {'warning': lambda _, msg: self.warnings.append(msg)})()


def _hook_with_loaded(state_list, iteration):
    from mmcals.hooks import SafeCheckpointHook
    hook = SafeCheckpointHook(interval=1)
    hook.after_load_checkpoint(None, {'rng_state': state_list, 'meta': {'iter': iteration}})
    return hook


def test_generators_are_taken_from_a_resumed_checkpoint_only():
    torch.manual_seed(1)
    saved = {'cpu': torch.get_rng_state()}
    expected = torch.rand(3)
    # A resume: the runner stands at the checkpoint's iteration.
    hook = _hook_with_loaded([saved], 7)
    torch.manual_seed(2)
    hook.before_train_iter(_Runner(7), 0)
    assert torch.equal(torch.rand(3), expected)
    # load_from: the runner starts at 0, the generators stay as they are.
    hook = _hook_with_loaded([saved], 7)
    torch.manual_seed(2)
    fresh = torch.get_rng_state()
    hook.before_train_iter(_Runner(0), 0)
    assert torch.equal(torch.get_rng_state(), fresh)


def test_generators_of_another_number_of_ranks_are_left_with_a_warning():
    torch.manual_seed(1)
    saved = {'cpu': torch.get_rng_state()}
    hook = _hook_with_loaded([saved, saved], 7)
    torch.manual_seed(2)
    fresh = torch.get_rng_state()
    runner = _Runner(7)
    hook.before_train_iter(runner, 0)
    assert torch.equal(torch.get_rng_state(), fresh)
    assert len(runner.warnings) == 1 and 'of 2 ranks and this run has 1' in runner.warnings[0]


def test_a_validation_gives_the_generators_back_as_it_found_them():
    from mmcals.hooks import SafeCheckpointHook
    hook = SafeCheckpointHook(interval=1)
    torch.manual_seed(3)
    expected = torch.get_rng_state()
    hook.before_val(None)
    torch.rand(10)  # a data loader starting, say
    hook.after_val(None)
    assert torch.equal(torch.get_rng_state(), expected)
