#!/usr/bin/env bash
# Shared by dist_train.sh and dist_test.sh: run tools/SCRIPT on NPROC processes per node with
# torchrun. Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT alike on every node.
#   bash tools/dist_run.sh SCRIPT NPROC [script args...]
set -euo pipefail
SCRIPT=$1
NPROC=$2
HERE=$(cd "$(dirname "$0")" && pwd)
PORT=${PORT:-29500}
PYTHON=${PYTHON:-python}
# torchrun's own message for a busy port is a 40-line traceback: check it first, on the node
# that will listen on it.
if [ "${NODE_RANK:-0}" = "0" ] && ! "$PYTHON" - "$PORT" <<'PY'
import socket
import sys

with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed run's TIME_WAIT is free
    try:
        s.bind(('', int(sys.argv[1])))
    except OSError:
        sys.exit(1)
PY
then
  echo "error: port $PORT is in use (another run?): choose a free one with PORT=<number>," \
    "e.g. PORT=$((PORT + 1)) bash tools/$(basename "${0/dist_run/dist_${SCRIPT%.py}}") ..." >&2
  exit 2
fi
PYTHONPATH="$HERE/..${PYTHONPATH:+:$PYTHONPATH}" \
"$PYTHON" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="$PORT" \
  --nproc_per_node="$NPROC" "$HERE/$SCRIPT" "${@:3}" --launcher pytorch
