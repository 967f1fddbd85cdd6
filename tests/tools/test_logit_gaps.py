"""tools/analysis/logit_gaps.py and LogitGapMetric against a direct computation of the gaps."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from inprocess_tool import run_tool_here
from mmengine.config import Config
from PIL import Image
from tooling import REPO, cityscapes_options, run_tool

from mmcals.evaluation import LogitGapMetric
from mmcals.evaluation import logit_gaps as module
from mmcals.evaluation.logit_gaps import configure_logit_gaps
from mmcals.losses.logit_gaps import GAP_BIN_WIDTH, GAP_NUM_BINS

TINY = osp.join(REPO, 'tests', 'configs', 'deeplabv3_tiny_cals_cityscapes.py')
# Gaps are taken in float32 in both computations; two float32 results of the same logits
# differ by a few ulps (< 1e-5 for gaps below 128), so only a gap this close to a bin edge (or
# a runner-up this close to the winner) may land on another side in the two computations.
EDGE = 1e-4
QUANTILES = [0.5, 0.9, 0.99]


def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope='module')
def checkpoint(tiny_cityscapes, tmp_path_factory):
    """The tiny CALS model trained for 2 iterations."""
    work_dir = tmp_path_factory.mktemp('gaps_train')
    _ok(run_tool('train.py', TINY, '--work-dir', work_dir, '--cfg-options',
                 *cityscapes_options(tiny_cityscapes), 'train_cfg.max_iters=2',
                 'param_scheduler.0.end=2'))
    return str(work_dir / 'iter_2.pth')


def _direct_gaps(checkpoint, root):
    """Per class, the gaps of its (pixel, k != winner) pairs on the val split, float64, and
    the pairs too close to a bin edge or a tie for the two computations to agree surely."""
    from mmengine.dataset import pseudo_collate
    from mmseg.registry import DATASETS, MODELS
    from mmseg.utils import register_all_modules

    import mmcals  # noqa: F401

    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(TINY)
    model = MODELS.build(cfg.model)
    # Our own file from the fixture above, hence trusted.
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict']
    model.load_state_dict(state)
    model.eval()
    dataset = DATASETS.build(dict(cfg.val_dataloader.dataset, data_root=root))
    gaps = [[] for _ in range(19)]
    unsure = np.zeros(19, np.int64)
    for i in range(len(dataset)):
        with torch.no_grad():
            sample = model.test_step(pseudo_collate([dataset[i]]))[0]
        z = sample.seg_logits.data.reshape(19, -1).T.float()
        labels = sample.gt_sem_seg.data.reshape(-1)
        z = z[labels != 255]
        top, winner = z.max(1)
        d = (top[:, None] - z).double().numpy()
        winner = winner.numpy()
        runner_up = np.sort(d, 1)[:, 1]
        for k in range(19):
            mine = d[winner != k, k]
            gaps[k].append(mine)
            near_edge = np.abs(mine / GAP_BIN_WIDTH - np.round(mine / GAP_BIN_WIDTH))
            unsure[k] += int((near_edge < EDGE / GAP_BIN_WIDTH).sum())
            unsure[k] += int((runner_up < EDGE).sum())
    return [np.concatenate(g) for g in gaps], unsure


@pytest.fixture(scope='module')
def measured(checkpoint, tiny_cityscapes, tmp_path_factory):
    """The direct gaps, and the tool's single-process run on the val split."""
    gaps, unsure = _direct_gaps(checkpoint, tiny_cityscapes)
    pooled = np.concatenate(gaps)
    # Candidate margins inside the measured range, so that the shares are neither 0 nor 1.
    margins = [float(np.quantile(pooled, q)) for q in (0.3, 0.8)]
    work_dir = tmp_path_factory.mktemp('gaps_val')
    result = _ok(run_tool('analysis/logit_gaps.py', TINY, checkpoint, '--work-dir', work_dir,
                          '--out-dir', work_dir / 'out', '--quantiles', *QUANTILES,
                          '--margins', *margins, '--cfg-options',
                          *cityscapes_options(tiny_cityscapes), env={'OMP_NUM_THREADS': '1'}))
    return dict(gaps=gaps, unsure=unsure, margins=margins, work_dir=work_dir, result=result,
                summary=json.loads((work_dir / 'out' / 'logit_gaps.json').read_text()))


def test_gaps_of_a_trained_model_match_a_direct_computation(measured):
    gaps, unsure, margins = measured['gaps'], measured['unsure'], measured['margins']
    out_dir, summary = measured['work_dir'] / 'out', measured['summary']
    log = measured['result'].stdout + measured['result'].stderr
    assert 'Iter(test) [2/2]' in log and 'gap_p90' in log  # mmengine's test loop ran it
    assert summary['split'] == 'val' and len(summary['per_class']) == 19
    assert summary['quantiles'] == QUANTILES and summary['margins'] == margins
    with Image.open(out_dir / 'logit_gaps.png') as image:
        assert image.size[0] > 200 and image.size[1] > 200
    assert not list(out_dir.glob('*.tmp'))

    for k, row in enumerate(summary['per_class']):
        g = gaps[k]
        expected = np.bincount(np.clip(np.floor(g / GAP_BIN_WIDTH), 0, GAP_NUM_BINS - 1)
                               .astype(int), minlength=GAP_NUM_BINS)
        counts = np.array(row['counts'])
        assert abs(row['pairs'] - len(g)) <= unsure[k], row['class']
        assert np.abs(counts - expected).sum() <= 2 * unsure[k], row['class']
        for q in QUANTILES:
            # Interpolated inside the bin that holds the quantile: within one bin width.
            exact = np.quantile(g, q)
            assert abs(row['gap_at_quantile'][f'{q:g}'] - exact) <= GAP_BIN_WIDTH + EDGE
        for m in margins:
            # The bin holding m is split in proportion: off by at most that bin's share.
            bin_share = expected[min(int(m / GAP_BIN_WIDTH), GAP_NUM_BINS - 1)] / len(g)
            exact = float(np.mean(g > m))
            assert abs(row['share_above'][f'{m:g}'] - exact) <= bin_share + unsure[k] / len(g)
    # Every valid pixel makes exactly C - 1 pairs: 2 images of 62 x 128 valid pixels.
    assert summary['all']['pairs'] == sum(len(g) for g in gaps) == 2 * 62 * 128 * 18
    # mmengine's own metrics file of the test run holds the pooled numbers.
    work_dir = measured['work_dir']
    metrics_file = next(p for p in work_dir.glob('*/*.json') if p.stem == p.parent.name)
    logged = json.loads(metrics_file.read_text())
    assert logged['gap_p50'] == pytest.approx(summary['all']['gap_at_quantile']['0.5'])
    assert logged[f'share_above_{margins[1]:g}'] == pytest.approx(
        summary['all']['share_above'][f'{margins[1]:g}'])


def test_bad_quantiles_are_refused_before_running(tmp_path):
    # Refused before the checkpoint is even looked for.
    result = run_tool('analysis/logit_gaps.py', TINY, tmp_path / 'missing.pth', '--work-dir',
                      tmp_path, '--quantiles', '0.5', '1.5')
    assert result.returncode == 2
    assert 'quantiles must lie in [0, 1], got 1.5' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written


def test_pytorch_launcher_outside_torchrun_names_the_launcher_command(tmp_path):
    result = run_tool_here('analysis/logit_gaps.py', TINY, tmp_path / 'model.pth',
                           '--launcher', 'pytorch',
                           env={name: None for name in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE')})
    assert result.returncode == 2
    assert 'tools/dist_run.sh analysis/logit_gaps.py GPUS CONFIG CHECKPOINT' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _sample(logits, labels):
    return {'seg_logits': {'data': logits}, 'gt_sem_seg': {'data': labels}}


def test_metric_drops_sampler_padding_and_sums_ranks_exactly(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    images = [_sample(torch.randn(4, 6, 5, generator=gen) * 8,
                      torch.randint(0, 4, (1, 6, 5), generator=gen)) for _ in range(5)]
    for sample in images:
        sample['gt_sem_seg']['data'][0, 0, 0] = 255
    meta = {'classes': ('a', 'b', 'c', 'd')}

    single = LogitGapMetric(margins=[4.0], chunk_size=7)
    single.dataset_meta = meta
    single.process(None, images)
    exact = sum(single.image_histogram(s['seg_logits']['data'], s['gt_sem_seg']['data'])
                for s in images)
    expected = single.evaluate(len(images))

    # Two ranks: rank r gets positions r, r + 2, ...; rank 1 is padded with image 0.
    parts = []
    monkeypatch.setattr('mmengine.evaluator.BaseMetric.evaluate',
                        lambda self, size: parts.extend(self.results))
    for rank in (0, 1):
        monkeypatch.setattr(module, 'get_dist_info', lambda rank=rank: (rank, 2))
        metric = LogitGapMetric(margins=[4.0])
        metric.dataset_meta = meta
        metric.process(None, (images + images[:1])[rank::2])
        metric.evaluate(len(images))
    assert torch.equal(parts[0] + parts[1], exact)
    monkeypatch.undo()
    merged = LogitGapMetric(margins=[4.0])
    merged.dataset_meta = meta
    assert merged.compute_metrics(parts) == pytest.approx(expected, nan_ok=True)
    # Each valid pixel gives one pair per class other than its winner.
    assert exact.sum() == 5 * (30 - 1) * 3
    assert set(expected) == {'gap_p50', 'gap_p90', 'gap_p99', 'share_above_4'}


def test_metric_refuses_missing_fields_and_mismatched_classes():
    metric = LogitGapMetric()
    metric.dataset_meta = {'classes': ('a', 'b')}
    with pytest.raises(KeyError, match='seg_logits'):
        metric.process(None, [{'gt_sem_seg': {'data': torch.zeros(1, 2, 2)}}])
    with pytest.raises(ValueError, match='3 channels but dataset_meta lists 2 classes'):
        metric.process(None, [_sample(torch.zeros(3, 2, 2), torch.zeros(1, 2, 2))])
    with pytest.raises(ValueError, match='quantiles must lie in'):
        LogitGapMetric(quantiles=[2])
    with pytest.raises(ValueError, match='margins must be finite'):
        LogitGapMetric(margins=[-1])


def test_train_split_is_read_once_in_order_without_augmentation():
    cfg = Config(dict(
        test_pipeline=[dict(type='LoadImageFromFile')],
        train_dataloader=dict(batch_size=8, sampler=dict(type='InfiniteSampler'),
                              dataset=dict(type='RepeatDataset', times=3, dataset=dict(
                                  type='X', pipeline=[dict(type='RandomFlip')]))),
        model=dict(decode_head=dict(ignore_index=7))))
    configure_logit_gaps(cfg, 'train', margins=[3], out_dir='o')
    loader = cfg.test_dataloader
    assert loader.batch_size == 1 and loader.sampler == dict(type='DefaultSampler',
                                                             shuffle=False)
    assert loader.dataset.dataset.pipeline == [dict(type='LoadImageFromFile')]
    assert cfg.train_dataloader.dataset.dataset.pipeline == [dict(type='RandomFlip')]
    assert cfg.test_evaluator.type == 'LogitGapMetric' and cfg.test_evaluator.ignore_index == 7
    with pytest.raises(ValueError, match='no val_dataloader'):
        configure_logit_gaps(Config(dict()), 'val')
