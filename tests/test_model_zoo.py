"""docs/model_zoo.md lists every config in configs/, with what each really trains.

The table cannot rot: a config missing from it, a row without its config, a schedule or batch
that differs from the config, or a CamVid number that differs from docs/results_camvid.md (the
only results really run) fails here.
"""
import os
import os.path as osp
import re

import pytest
from parsed_configs import load

import mmcals  # noqa: F401  (registrations, mmseg:: configs)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
ZOO = osp.join(REPO, 'docs', 'model_zoo.md')
CAMVID_RESULTS = osp.join(REPO, 'docs', 'results_camvid.md')
COLUMNS = ['config', 'dataset', 'model', 'method', 'schedule', 'train command', 'results']


def zoo_rows() -> dict:
    rows = {}
    with open(ZOO) as f:
        for line in f:
            if not line.startswith('| `configs/'):
                continue
            cells = [cell.strip() for cell in line.strip().strip('|').split('|')]
            assert len(cells) == len(COLUMNS), line
            row = dict(zip(COLUMNS, cells))
            name = re.fullmatch(r'`configs/([^`]+\.py)`', row['config']).group(1)
            assert name not in rows, f'{name} is listed twice'
            rows[name] = row
    return rows


# The method table of each schedule of the CamVid study: its heading in docs/results_camvid.md
# and the footnote mark of the zoo rows that quote it.
CAMVID_TABLES = {'¹': '## Results on CamVid val', '³': '### 2000 iterations: results on CamVid val',
                 '⁴': '### 4000 iterations: results on CamVid val'}
# The schedule each table is of: a row's config must have it.
CAMVID_LENGTHS = {'¹': 16000, '³': 2000, '⁴': 4000}


def camvid_results(heading: str = CAMVID_TABLES['¹']) -> dict:
    """``method -> (mIoU, ECE)`` cells of the method table under ``heading`` of
    docs/results_camvid.md."""
    with open(CAMVID_RESULTS) as f:
        text = f.read()
    assert heading + '\n' in text, f'no "{heading}" section in docs/results_camvid.md'
    table = text.split(heading + '\n', 1)[1]
    results = {}
    for line in table.splitlines():
        cells = [c.strip().replace('**', '') for c in line.strip().strip('|').split('|')]
        if len(cells) == 7 and re.match(r'[\d.]+', cells[1]):
            results.setdefault(cells[0], (cells[1], cells[2]))  # the first table: by method
        elif results and not line.startswith('|'):
            if line.strip():
                break
    return results


def test_every_config_is_in_the_zoo_and_every_row_is_a_config():
    configs = {n for n in os.listdir(osp.join(REPO, 'configs')) if n.endswith('.py')}
    rows = set(zoo_rows())
    assert not configs - rows, f'configs missing from docs/model_zoo.md: {sorted(configs - rows)}'
    assert not rows - configs, f'rows without a config: {sorted(rows - configs)}'


@pytest.mark.parametrize('name', sorted(zoo_rows()))
def test_each_row_says_what_its_config_trains(name):
    row = zoo_rows()[name]
    cfg = load(name)
    # Schedule: "<G> GPUs x <B> images" or "1 process x <B> images", then the length.
    match = re.match(r'(\d+) (?:GPUs?|process) x (\d+) images?, (\d+)(k?) (iterations|epochs)',
                     row['schedule'])
    assert match, row['schedule']
    gpus, batch, length = int(match[1]), int(match[2]), int(match[3]) * (
        1000 if match[4] else 1)
    assert batch == cfg.train_dataloader.batch_size, name
    loop = cfg.train_cfg
    assert length == (loop.max_epochs if match[5] == 'epochs' else loop.max_iters), name
    named = re.search(r'_(\d+)xb(\d+)-', name)
    if named:  # mmseg-style names state GPUs and batch per GPU
        assert (int(named[1]), int(named[2])) == (gpus, batch), name
    command = row['train command'].strip('`')
    if command == 'make demo':
        assert name.startswith('demo_')
    else:
        assert f'configs/{name}' in command, command
        if gpus > 1:
            assert command.startswith('bash tools/dist_train.sh') and command.endswith(
                f' {gpus}'), command
    method = 'CALS' if 'CALSHook' in [h['type'] for h in cfg.get('custom_hooks', [])] else None
    assert (row['method'] == 'CALS') == (method == 'CALS'), name


def test_results_are_only_those_really_run():
    # The footnote says which schedule's table a row quotes, and the row's config must have
    # that schedule: 16,000 iterations for the study's table, 2000 and 4000 for earlier ones.
    tables = {mark: camvid_results(heading) for mark, heading in CAMVID_TABLES.items()}
    for name, row in zoo_rows().items():
        result = row['results']
        if '_camvid' in name and result != 'not run':
            match = re.fullmatch(r'mIoU ([\d.]+(?: ± [\d.]+)?), ECE ([\d.]+(?: ± [\d.]+)?) '
                                 r'\(([^,)]+)(?:, (\d+) runs)?\) ([¹³⁴])', result)
            assert match, f'{name}: {result}'
            reference = tables[match[5]]
            assert reference, f'no method table under "{CAMVID_TABLES[match[5]]}"'
            assert load(name).train_cfg.max_iters == CAMVID_LENGTHS[match[5]], (
                f'{name} quotes the table of the {CAMVID_LENGTHS[match[5]]}-iteration schedule')
            method = match[3] + (f' ({match[4]} runs)' if match[4] else '')
            assert reference.get(method) == (match[1], match[2]), (
                f'{name}: {result} differs from docs/results_camvid.md {reference.get(method)}; '
                'update docs/model_zoo.md')
        elif name.startswith('demo_'):
            assert not re.search(r'\d', result.replace('²', '')), result
        else:
            assert result == 'not run', f'{name}: {result}'
