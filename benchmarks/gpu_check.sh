#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): contrastive loss at B = 16,384 / 65,536, one bf16 training
# step per GPU config, point ops on the device against CPU, training MFU; one table, printed and written to
# --out (gpu_check.md, gpu_check.json). Under 8 minutes on one H100; rows past --budget-s are skipped.
#
#   bash benchmarks/gpu_check.sh --out runs/gpu_check          # on a GPU machine
#   bash benchmarks/gpu_check.sh --dry-run --out /tmp/check     # CPU, tiny sizes, seconds
#
# PYTHON picks the interpreter (default: the repository's .venv, else python3). A hard stop at 470 s keeps the
# whole check under 8 minutes; the table written to --out after every row survives it.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec timeout --signal=TERM --kill-after=10 470 "$PYTHON" benchmarks/gpu_check.py "$@"
