#!/usr/bin/env bash
# Shared by dist_train.sh and dist_test.sh: run tools/SCRIPT on NPROC processes per node with
# torchrun. Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT alike on every node.
#   bash tools/dist_run.sh SCRIPT NPROC [script args...]
set -euo pipefail
SCRIPT=$1
NPROC=$2
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHONPATH="$HERE/..${PYTHONPATH:+:$PYTHONPATH}" \
"${PYTHON:-python}" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
  --nproc_per_node="$NPROC" "$HERE/$SCRIPT" "${@:3}" --launcher pytorch
