"""CALSHook and the multiplier update of docs/method.md §3: hand-made statistics, then real runs of
tools/train.py and tools/dist_train.sh on a generated Cityscapes-layout dataset."""
import glob
import json
import logging
import math
import os.path as osp
import socket
from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MMLogger
from tooling import REPO, cityscapes_options, run_tool

import mmcals  # noqa: F401  (registers the modules)
from mmcals.hooks import CALSHook
from mmcals.losses import CALSLoss
from mmcals.losses.constraint_stats import ConstraintStats

TINY = osp.join(REPO, 'tests', 'configs', 'deeplabv3_tiny_cals_cityscapes.py')
HEADS = ('decode_head', 'auxiliary_head')
# A margin the first iterations' small logits already violate, a λ away from its lower bound
# and ρ tested at every update: λ and ρ move within a few iterations.
MOVING = [f'model.{head}.loss_decode.1.{key}' for head in HEADS
          for key in ('margin=0.05', 'lambda_init=0.5', 'rho_interval=1')]
ENV = {'OMP_NUM_THREADS': '1'}


# The update rule on hand-made statistics ---------------------------------------------------
def stats(values):
    return torch.tensor(values, dtype=torch.float64)


def update(loss, sum_derivative, sum_constraint, count, **kwargs):
    """update_multipliers on hand-made sums (no diagnostics needed by the rule)."""
    sums = ConstraintStats.zeros(loss.num_classes)
    sums.sum_derivative, sums.sum_constraint = sum_derivative, sum_constraint
    sums.count = torch.tensor(float(count), dtype=torch.float64)
    return loss.update_multipliers(sums, **kwargs)


def test_lambda_becomes_the_clamped_mean_derivative():
    loss = CALSLoss(4, lambda_min=0.1, lambda_max=5.0)
    assert update(loss, stats([0.5, 30.0, 4.0, 0.2]), stats([0, 0, 0, 0]), 4)
    # 0.5/4, 30/4 clamped to 5, 4/4, 0.2/4 clamped to 0.1
    assert loss.lambda_.tolist() == [0.125, 5.0, 1.0, 0.1]
    assert int(loss.num_updates) == 1


def test_rho_grows_every_interval_where_the_constraint_did_not_improve_enough():
    loss = CALSLoss(4, rho_interval=2, rho_gamma=1.5, rho_tau=0.9, rho_max=2.0)
    ones = stats([1, 1, 1, 1])

    # Update 1 has no previous H: ρ stays.
    update(loss, ones, stats([-0.5, 0.4, 0.4, 0.4]), 1)
    assert loss.rho.tolist() == [1, 1, 1, 1]
    assert loss.prev_constraint.tolist() == [-0.5, 0.4, 0.4, 0.4]
    # Update 2 tests H > 0.9·max(H_prev, 0): 0.1 > 0 yes, 0.2 > 0.36 no, 0.37 > 0.36 yes.
    update(loss, ones, stats([0.1, 0.2, 0.37, 0.5]), 1)
    assert loss.rho.tolist() == [1.5, 1.0, 1.5, 1.5]
    # Update 3 is not a ρ update, whatever H does.
    update(loss, ones, stats([1, 1, 1, 1]), 1)
    assert loss.rho.tolist() == [1.5, 1.0, 1.5, 1.5]
    # Update 4: 2 > 0.9 grows to min(2.25, 2); 0.5 > 0.9 does not.
    update(loss, ones, stats([2, 0.5, 2, 2]), 1)
    assert loss.rho.tolist() == [2.0, 1.0, 2.0, 2.0]
    assert loss.prev_constraint.tolist() == [2, 0.5, 2, 2]
    assert int(loss.num_updates) == 4


def test_rho_interval_zero_never_grows_rho():
    loss = CALSLoss(2, rho_interval=0)
    for constraint in ([-1, -1], [5, 5], [9, 9]):
        update(loss, stats([1, 1]), stats(constraint), 1)
    assert loss.rho.tolist() == [1.0, 1.0]


@pytest.fixture
def warnings_logged():
    logger = MMLogger.get_current_instance()
    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_non_finite_statistics_are_refused_with_a_warning(warnings_logged):
    loss = CALSLoss(3, rho_interval=1)
    update(loss, stats([3, 3, 3]), stats([1, 1, 1]), 3)
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    applied = update(loss, stats([3, float('nan'), 3]), stats([9, 9, float('inf')]),
                                      12, class_names=['road', 'sidewalk', 'building'])
    assert not applied
    for key, value in loss.state_dict().items():
        assert torch.equal(value, before[key]), key
    message = warnings_logged[-1].getMessage()
    assert "'sidewalk' (1)" in message and "'building' (2)" in message
    assert '2 of 3 classes' in message and '12 pixels' in message


def test_an_update_without_pixels_is_refused(warnings_logged):
    loss = CALSLoss(2)
    assert not update(loss, stats([0, 0]), stats([0, 0]), 0)
    assert int(loss.num_updates) == 0 and 'no pixels' in warnings_logged[-1].getMessage()


def test_a_jump_of_lambda_to_its_bound_is_named_in_a_warning(warnings_logged):
    loss = CALSLoss(3, lambda_max=5.0)
    names = ['road', 'sidewalk', 'building']
    assert update(loss, stats([0.3, 300.0, 1.0]), stats([0, 0, 0]), 3, class_names=names)
    assert loss.lambda_.tolist() == pytest.approx([0.1, 5.0, 1.0 / 3], rel=1e-15)
    jumps = [r.getMessage() for r in warnings_logged if 'jumped to lambda_max' in r.getMessage()]
    assert len(jumps) == 1 and "'sidewalk' (1)" in jumps[0] and 'road' not in jumps[0]
    assert 'λ was 1e-06' in jumps[0]
    # Staying at the bound is no new jump.
    update(loss, stats([0.3, 300.0, 1.0]), stats([0, 0, 0]), 3, class_names=names)
    assert sum('jumped' in r.getMessage() for r in warnings_logged) == 1


def test_hook_arguments_are_checked():
    with pytest.raises(ValueError, match="'test'"):
        CALSHook(source='test')
    with pytest.raises(ValueError, match='needs source="train"'):
        CALSHook(interval=10)
    with pytest.raises(ValueError, match='interval=0'):
        CALSHook(source='train', interval=0)
    with pytest.raises(ValueError, match='inactive_updates=0'):
        CALSHook(inactive_updates=0)
    with pytest.raises(ValueError, match='inactive_share=0'):
        CALSHook(inactive_share=0)


def test_hook_without_a_cals_loss_says_what_to_add():
    runner = SimpleNamespace(model=torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)))
    with pytest.raises(RuntimeError, match='no CALSLoss'):
        CALSHook().before_train(runner)


def test_losses_are_found_in_each_head_with_its_ignore_index():
    from mmseg.registry import MODELS
    head = {'type': 'FCNHead', 'in_channels': 4, 'channels': 4, 'num_convs': 1,
            'concat_input': False, 'num_classes': 3, 'norm_cfg': None}
    model = torch.nn.Module()
    model.decode_head = MODELS.build(dict(head, ignore_index=7, loss_decode=[
        {'type': 'CrossEntropyLoss'}, {'type': 'CALSLoss', 'num_classes': 3}]))
    model.auxiliary_head = MODELS.build(dict(head, loss_decode=[
        {'type': 'CALSLoss', 'num_classes': 3},
        {'type': 'CALSLoss', 'num_classes': 3, 'loss_name': 'loss_cals2'}]))
    found = CALSHook.find_losses(model)
    assert sorted(found) == ['auxiliary_head.loss_decode.0', 'auxiliary_head.loss_decode.1',
                             'decode_head']
    assert found['decode_head'][1] == 7 and found['auxiliary_head.loss_decode.0'][1] == 255
    assert found['decode_head'][0] is model.decode_head.loss_decode[1]


# Real training runs ---------------------------------------------------------------------------
def train(work_dir, data_root, *options, config=TINY, extra=()):
    result = run_tool('train.py', config, '--work-dir', work_dir, *extra, '--cfg-options',
                      *cityscapes_options(data_root), *options, env=ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def checkpoint_state(path):
    return torch.load(path, map_location='cpu', weights_only=False)['state_dict']


def scalars(work_dir):
    (path,) = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(path) as f:
        return [json.loads(line) for line in f]


CALS_KEYS = ('lambda_', 'rho', 'prev_constraint', 'num_updates')
DIAGNOSTICS = ('violating_share', 'acting_share', 'mean_h', 'gap_p50', 'gap_p90', 'gap_p99')
POOLED = ('violating_share', 'acting_share', 'gap_p50', 'gap_p90', 'gap_p99', 'margin_1pct',
          'margin_10pct')


def cals_buffers(state):
    return {k: v for k, v in state.items() if 'loss_decode.1.' in k and k.endswith(CALS_KEYS)}


@pytest.fixture(scope='module')
def val_run(tiny_cityscapes, tmp_path_factory):
    """The CALS Cityscapes config (shrunk): 4 iterations, validation and checkpoint every 2."""
    work_dir = tmp_path_factory.mktemp('cals_val')
    log = train(work_dir, tiny_cityscapes, *MOVING)
    return work_dir, log


def test_cityscapes_cals_config_trains_and_updates_at_each_validation(val_run):
    work_dir, log = val_run
    with open(work_dir / 'cals_history.json') as f:
        history = json.load(f)
    assert history['source'] == 'val' and history['classes'][:2] == ['road', 'sidewalk']
    assert set(history['losses']) == set(HEADS)
    for head in HEADS:
        entries = history['losses'][head]
        assert [(e['update'], e['iter']) for e in entries] == [(0, 0), (1, 2), (2, 4)]
        assert entries[0]['lambda'] == [0.5] * 19 and entries[0]['rho'] == [1.0] * 19
        # Two 64x128 validation images minus the ignored border rows.
        assert entries[1]['pixels'] == entries[2]['pixels'] == 2 * 62 * 128
        assert entries[2]['lambda'] != entries[1]['lambda'] != entries[0]['lambda']
        assert max(entries[2]['rho']) > 1.0
        # The checkpoints carry what the history says. mmengine writes iter_2.pth before the
        # validation of iteration 2, so it holds the initial multipliers; the last checkpoint
        # is rewritten after the final validation and holds its update.
        for name, entry in (('iter_2.pth', entries[0]), ('iter_4.pth', entries[2])):
            state = checkpoint_state(work_dir / name)
            assert state[f'{head}.loss_decode.1.lambda_'].tolist() == entry['lambda']
            assert state[f'{head}.loss_decode.1.rho'].tolist() == entry['rho']
            assert int(state[f'{head}.loss_decode.1.num_updates']) == entry['update']
    assert log.count('CALS update from val statistics at iteration') == 2
    with open(work_dir / 'cals_lambda.png', 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_multiplier_summaries_reach_the_visualizer_backends(val_run):
    work_dir, _ = val_run
    with open(work_dir / 'cals_history.json') as f:
        history = json.load(f)
    logged = [row for row in scalars(work_dir) if 'cals/decode_head/lambda_mean' in row]
    assert [row['step'] for row in logged] == [2, 4]
    for row, entry in zip(logged, history['losses']['decode_head'][1:]):
        lam = torch.tensor(entry['lambda'], dtype=torch.float64)
        rho = torch.tensor(entry['rho'], dtype=torch.float64)
        assert row['cals/decode_head/lambda_mean'] == pytest.approx(lam.mean().item())
        assert row['cals/decode_head/lambda_max'] == pytest.approx(lam.max().item())
        assert row['cals/decode_head/rho_min'] == pytest.approx(rho.min().item())
        assert 'cals/auxiliary_head/rho_mean' in row and 'mIoU' in row


def test_diagnostics_reach_the_history_and_the_visualizer_backends(val_run):
    work_dir, log = val_run
    with open(work_dir / 'cals_history.json') as f:
        history = json.load(f)
    rows = [row for row in scalars(work_dir) if 'cals/decode_head/acting_share' in row]
    assert [row['step'] for row in rows] == [2, 4]
    for head in HEADS:
        first, *updates = history['losses'][head]
        assert not set(DIAGNOSTICS) & set(first) and 'all' not in first
        for entry in updates:
            for key in DIAGNOSTICS:
                assert len(entry[key]) == 19, key
                assert all(v is None or math.isfinite(v) for v in entry[key]), key
            assert set(entry['all']) == set(POOLED)
            shares = [v for v in entry['acting_share'] if v is not None]
            assert shares and all(0 <= v <= 1 for v in shares)
    for row, entry in zip(rows, history['losses']['decode_head'][1:]):
        pooled = entry['all']
        for key in ('acting_share', 'violating_share', 'gap_p50', 'gap_p90', 'gap_p99'):
            assert row[f'cals/decode_head/{key}'] == pytest.approx(pooled[key]), key
        shares = [v for v in entry['acting_share'] if v is not None]
        assert row['cals/decode_head/acting_share_min'] == pytest.approx(min(shares))
        assert row['cals/decode_head/acting_share_max'] == pytest.approx(max(shares))
    # margin=0.05 on the tiny model: CALS acts on most pairs, no inactivity warning.
    assert history['losses']['decode_head'][-1]['all']['acting_share'] > 0.1
    assert 'CALS is inactive' not in log


INERT = """
custom_hooks = [dict(type='CALSHook', source='train', interval=1, inactive_updates=3)]
"""


def test_an_inactive_cals_is_reported_once_and_the_count_survives_a_resume(tiny_cityscapes,
                                                                          tmp_path):
    # The default margin (10) against the gaps of a freshly initialised tiny model (< 2): no
    # pair comes near the margin, so CALS never acts; 4 updates, one per iteration.
    config = tmp_path / 'inert.py'
    config.write_text(f"_base_ = '{TINY}'\n" + INERT)
    first, second = tmp_path / 'first', tmp_path / 'second'
    log = train(first, tiny_cityscapes, config=config)
    with open(first / 'cals_history.json') as f:
        entries = json.load(f)['losses']['decode_head']
    assert len(entries) == 5
    assert all(max(v for v in e['acting_share'] if v is not None) < 1e-3 for e in entries[1:])
    warnings = [line for line in log.splitlines() if 'CALS is inactive' in line]
    assert len(warnings) == 1  # once per run, for the first head that stayed inactive
    assert 'inactive for decode_head' in warnings[0]
    pooled = entries[3]['all']  # the third update, where the warning fired
    for key in ('gap_p50', 'gap_p90', 'gap_p99', 'margin_1pct', 'margin_10pct'):
        assert f'{pooled[key]:.3g}' in warnings[0], key
    assert 'WARNING' in warnings[0] and 'tools/analysis/logit_gaps.py' in warnings[0]
    assert 'margin=10' in warnings[0]
    # iter_2.pth holds two inactive updates: the resumed run warns at its first update.
    log = train(second, tiny_cityscapes, config=config,
                extra=('--resume', str(first / 'iter_2.pth')))
    assert sum('CALS is inactive' in line for line in log.splitlines()) == 1


def test_resume_continues_with_bit_identical_multipliers_and_losses(val_run, tiny_cityscapes,
                                                                     tmp_path):
    work_dir, _ = val_run
    log = train(tmp_path, tiny_cityscapes, *MOVING,
                extra=('--resume', str(work_dir / 'iter_2.pth')))
    # iter_2.pth was written before the validation of iteration 2: that update is redone.
    assert 'saved before that validation' in log
    uninterrupted = checkpoint_state(work_dir / 'iter_4.pth')
    resumed = checkpoint_state(tmp_path / 'iter_4.pth')
    assert len(cals_buffers(resumed)) == 8
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), key
    losses = {row['step']: row['loss'] for row in scalars(work_dir) if 'loss' in row}
    again = {row['step']: row['loss'] for row in scalars(tmp_path) if 'loss' in row}
    assert again.keys() == {3, 4} and all(again[step] == losses[step] for step in (3, 4))
    with open(work_dir / 'cals_history.json') as a, open(tmp_path / 'cals_history.json') as b:
        assert json.load(a) == json.load(b)


# Dropout draws from torch's generator, and mmengine itself draws from it when it starts a
# data loader (the validation's, and the training's again on resuming); data in a worker.
DROPOUT = ['model.decode_head.dropout_ratio=0.5', 'model.auxiliary_head.dropout_ratio=0.5',
           'train_dataloader.num_workers=1']


def test_resume_with_dropout_is_bit_identical(tiny_cityscapes, tmp_path):
    """The checkpoint carries the generators' state (SafeCheckpointHook) and a validation
    leaves it as it was: resumed from iter_2.pth, a run with dropout ends with the weights and
    losses of the uninterrupted run (mmengine alone gives other dropout masks after a resume)."""
    whole, resumed = tmp_path / 'whole', tmp_path / 'resumed'
    train(whole, tiny_cityscapes, *MOVING, *DROPOUT)
    train(resumed, tiny_cityscapes, *MOVING, *DROPOUT,
          extra=('--resume', str(whole / 'iter_2.pth')))
    a, b = checkpoint_state(whole / 'iter_4.pth'), checkpoint_state(resumed / 'iter_4.pth')
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses = {row['step']: row['loss'] for row in scalars(whole) if 'loss' in row}
    again = {row['step']: row['loss'] for row in scalars(resumed) if 'loss' in row}
    assert again.keys() == {3, 4} and all(again[step] == losses[step] for step in (3, 4))


def test_train_source_updates_every_interval_and_resumes_its_pending_sums(tiny_cityscapes,
                                                                          tmp_path):
    config = tmp_path / 'train_source.py'
    config.write_text(f"_base_ = '{TINY}'\n"
                      "custom_hooks = [dict(type='CALSHook', source='train', interval=3)]\n")
    first, second = tmp_path / 'first', tmp_path / 'second'
    train(first, tiny_cityscapes, *MOVING, config=config)
    with open(first / 'cals_history.json') as f:
        entries = json.load(f)['losses']['decode_head']
    # One update, at iteration 3, from the 3 training batches of 2 images before it.
    assert [(e['update'], e['iter']) for e in entries] == [(0, 0), (1, 3)]
    assert entries[1]['pixels'] == 3 * 2 * 62 * 128
    logged = [row for row in scalars(first) if 'cals/decode_head/lambda_mean' in row]
    assert logged and all(row['step'] >= 3 and 'loss' in row for row in logged)
    # iter_2.pth holds the sums of iterations 1-2 that the update at 3 needs.
    train(second, tiny_cityscapes, *MOVING, config=config,
          extra=('--resume', str(first / 'iter_2.pth')))
    a, b = checkpoint_state(first / 'iter_4.pth'), checkpoint_state(second / 'iter_4.pth')
    for key, value in cals_buffers(a).items():
        assert torch.equal(b[key], value), key


# Distributed -----------------------------------------------------------------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


@pytest.mark.parametrize('source', ['val', 'train'])
def test_two_ranks_hold_the_multipliers_of_one_process_over_both_shards(
        source, tiny_cityscapes, tmp_path):
    # A frozen model (learning rate 0; GroupNorm, no dropout) and the same batch shape in
    # both runs (one image per forward: float32 convolutions need not give bit-equal logits
    # for batches of 1 and 2), so both runs see bit-identical logits of the same 4 training
    # and 2 validation images: 2 ranks x 2 iterations against 1 process x 4 iterations, one
    # update at the end of each (InfiniteSampler without shuffling deals images 0-3 to the
    # single process in turn, and 0, 2 / 1, 3 to the ranks).
    config = tmp_path / 'frozen.py'
    config.write_text(f"_base_ = '{TINY}'\n"
                      "custom_imports = dict(imports=['mmcals', 'rank_state_hook'])\n"
                      f"custom_hooks = [dict(type='CALSHook', source='{source}'),\n"
                      "                dict(type='RankStateDumpHook')]\n")
    options = [*cityscapes_options(tiny_cityscapes), *MOVING, 'optim_wrapper.optimizer.lr=0',
               'param_scheduler.0.eta_min=0', 'train_dataloader.batch_size=1']
    env = dict(ENV, PYTHONPATH=osp.join(REPO, 'tests'))
    ddp = run_tool('dist_train.sh', config, '2', '--work-dir', tmp_path / 'ddp',
                   '--cfg-options', *options, 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
                   'default_hooks.checkpoint.interval=2', env=dict(env, PORT=_free_port()))
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    single = run_tool('train.py', config, '--work-dir', tmp_path / 'single', '--cfg-options',
                      *options, 'train_cfg.max_iters=4', 'train_cfg.val_interval=4',
                      'default_hooks.checkpoint.interval=4', env=env)
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]

    ranks = [cals_buffers(torch.load(tmp_path / 'ddp' / f'rank{r}_state.pth',
                                     weights_only=True)) for r in (0, 1)]
    one = cals_buffers(torch.load(tmp_path / 'single' / 'rank0_state.pth', weights_only=True))
    assert len(one) == 8
    # With bit-identical per-image (val) or per-iteration (train) statistics, the runs differ
    # only in how the float64 sums are associated (((s1+s2)+s3)+s4 against (s1+s2)+(s3+s4)):
    # for the positive sums behind λ at most 3 roundings, relative 3·2**-53 < 1e-15; H (signed
    # sums of h, |h| < 100 here) to 1e-12 absolute. A rank's statistics counted twice or
    # dropped would change the pixel count by a whole image (7936 pixels), checked exactly
    # below, and λ by far more than these tolerances.
    for key, value in one.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        if key.endswith('prev_constraint'):
            assert torch.allclose(ranks[0][key], value, rtol=0, atol=1e-12), key
        else:
            assert torch.allclose(ranks[0][key].double(), value.double(), rtol=1e-13,
                                  atol=0), key
    for head in HEADS:
        assert (one[f'{head}.loss_decode.1.lambda_'] != 0.5).all()  # the update did something
        assert int(one[f'{head}.loss_decode.1.num_updates']) == 1
    histories = []
    for run in ('ddp', 'single'):
        with open(tmp_path / run / 'cals_history.json') as f:
            histories.append(json.load(f)['losses'])
    pixels = (4 if source == 'train' else 2) * 62 * 128
    for head in HEADS:
        (_, a), (_, b) = histories[0][head], histories[1][head]
        assert a['pixels'] == b['pixels'] == pixels
        # Counts are integers in float64: the diagnostics agree exactly.
        for key in DIAGNOSTICS:
            if key != 'mean_h':
                assert a[key] == b[key], (head, key)
        assert a['all'] == b['all']
        assert a['mean_h'] == pytest.approx(b['mean_h'], rel=0, abs=1e-12)


# Epoch-based loops -------------------------------------------------------------------------
EPOCHS = """
train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=2, val_interval=1)
train_dataloader = dict(sampler=dict(_delete_=True, type='DefaultSampler', shuffle=False))
default_hooks = dict(checkpoint=dict(by_epoch=True, interval=1))
log_processor = dict(by_epoch=True)
custom_hooks = [dict(type='CALSHook', source='{source}')]
"""


@pytest.mark.parametrize('source', ['val', 'train'])
def test_epoch_based_updates_and_resume(source, tiny_cityscapes, tmp_path):
    config = tmp_path / 'epochs.py'
    config.write_text(f"_base_ = '{TINY}'\n" + EPOCHS.format(source=source))
    first, second = tmp_path / 'first', tmp_path / 'second'
    train(first, tiny_cityscapes, *MOVING, config=config)
    with open(first / 'cals_history.json') as f:
        entries = json.load(f)['losses']['decode_head']
    # One update per epoch (2 iterations of 2 images), after its validation or at its end.
    assert [(e['update'], e['epoch'], e['iter']) for e in entries] == [
        (0, 0, 0), (1, 1, 2), (2, 2, 4)]
    pixels = 2 * 62 * 128 * (1 if source == 'val' else 2)
    assert entries[1]['pixels'] == entries[2]['pixels'] == pixels
    log = train(second, tiny_cityscapes, *MOVING, config=config,
                extra=('--resume', str(first / 'epoch_1.pth')))
    # The epoch-end update of source='train' happens before the checkpoint is written.
    assert ('saved before that validation' in log) == (source == 'val')
    a, b = checkpoint_state(first / 'epoch_2.pth'), checkpoint_state(second / 'epoch_2.pth')
    for key, value in cals_buffers(a).items():
        assert torch.equal(b[key], value), key
    with open(second / 'cals_history.json') as f:
        assert json.load(f)['losses']['decode_head'] == entries
