"""One rank of the 2-process gloo test of PixelCalibrationMetric (see test_calibration_metric).

    RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p python calibration_dist_worker.py \
        OUT_DIR NUM_IMAGES

Each rank takes the images mmengine's DefaultSampler would give it (rank r: positions r, r+2,
... of the index list padded with repeats), processes them in batches of 2, evaluates, and
writes the returned metrics to OUT_DIR/metrics_rank{r}.json; rank 0 also writes the metric's
files into OUT_DIR.
"""
import json
import math
import os
import os.path as osp
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from evaluation.calibration_reference import make_images  # noqa: E402
from mmseg.registry import METRICS  # noqa: E402

import mmcals  # noqa: E402,F401  (registers PixelCalibrationMetric)

NUM_CLASSES = 6
SEED = 20


def build_metric(out_dir):
    metric = METRICS.build(dict(type='PixelCalibrationMetric', out_dir=out_dir))
    metric.dataset_meta = dict(classes=[f'class{k}' for k in range(NUM_CLASSES)])
    return metric


def samples(images, indices):
    return [dict(seg_logits=dict(data=images[i][0]), gt_sem_seg=dict(data=images[i][1][None]))
            for i in indices]


def main():
    out_dir, num_images = sys.argv[1], int(sys.argv[2])
    rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    images = make_images(SEED, num_images=num_images, num_classes=NUM_CLASSES)
    total = math.ceil(num_images / world_size) * world_size
    padded = (list(range(num_images)) * 2)[:total]
    mine = padded[rank::world_size]
    metric = build_metric(out_dir if rank == 0 else osp.join(out_dir, 'unused'))
    for start in range(0, len(mine), 2):
        metric.process({}, samples(images, mine[start:start + 2]))
    metrics = metric.evaluate(num_images)
    with open(osp.join(out_dir, f'metrics_rank{rank}.json'), 'w') as f:
        json.dump(metrics, f)
    dist.barrier()
    dist.destroy_process_group()
    # CPU gloo runs can abort at interpreter exit after all work is done (docs/stack.md).
    sys.stdout.flush()
    os._exit(0)


if __name__ == '__main__':
    torch.set_num_threads(1)
    main()
