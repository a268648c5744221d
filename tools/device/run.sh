#!/usr/bin/env bash
# There (a GPU machine lent through the device tool; see /work/.library/device/README.md):
# install the wheels tools/device/prepare.sh downloaded (carry `.whl`) and this project into
# /tmp/site, then run one job, writing what comes back under $OUT:
#
#   check               a 3-step training of each architecture on the GPU and benchmark (a)
#                       on one VQA item: proves the install and the device paths (about a minute)
#   train ARCH [N]      ARCH's recipe (hones-nn train-embedded --recipe) on cuda with N batch
#                       workers (default 12); the model comes back as bf16 safetensors in a
#                       tar split into 15 MiB parts ($OUT/ARCH.tar.part-*): join them with
#                       `cat ARCH.tar.part-* | tar x`
#   bench               benchmark (a), the official loop against hones-nn, on cuda
#                       (--items 4), and the LLaVA-1.5-7B-shaped benchmark in bf16 at batch 1-64
#
# One device call, e.g.:  run(command="bash tools/device/run.sh train llava-16k", carry=[".whl"])
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/hones-device-out}
mkdir -p "$OUT"
t0=$(date +%s)
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# (setuptools warns at length about the data folders; its log is kept out of the way)
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
    --target /tmp/site . >/tmp/pip-project.log 2>&1 || { cat /tmp/pip-project.log; exit 1; }
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HONES_NN_HOME=$PWD/.whl/home
echo "installed in $(( $(date +%s) - t0 )) s"
"$PY" -c "import torch, transformers, nnsight; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'nnsight', nnsight.__version__)"
DEVICE=${DEVICE:-cuda}

ship() {  # ship ARCH DIR: the model folder as bf16 safetensors, tarred and split for the way back
  "$PY" - "$2" <<'PY'
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

path = Path(sys.argv[1]) / "model.safetensors"
tensors = load_file(path)
save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()}, path)
PY
  tar -C "$2" -cf - . | split -b 15m - "$OUT/$1.tar.part-"
}

case "${1:-}" in
  check)
    for arch in llava qwen2.5-vl llava-16k qwen2.5-vl-reader; do
      "$PY" -m hones_nn.embedded.train --architecture "$arch" --device "$DEVICE" --workers 2 --steps 3 \
        --warmup 1 --checkpoint-every 3 --n-train-scenes 64 --out-dir "/tmp/check-$arch"
      cp "/tmp/check-$arch/model/training_info.json" "$OUT/check-$arch.training_info.json"
    done
    "$PY" -m benchmarks.bench_reference_loop --items 1 --tasks vqa --modes paper --device "$DEVICE" \
      --threads 0 --out "$OUT/check_reference_loop.json"
    ;;
  train)
    arch=${2:?train needs an architecture: llava-16k, qwen2.5-vl-reader, llava or qwen2.5-vl}
    "$PY" -m hones_nn.embedded.train --recipe --architecture "$arch" --device "$DEVICE" \
      --workers "${3:-12}" --threads 4 --out-dir "/tmp/runs/$arch"
    cp "/tmp/runs/$arch/model/training_info.json" "$OUT/$arch.training_info.json"
    ship "$arch" "/tmp/runs/$arch/model"
    ;;
  bench)
    "$PY" -m benchmarks.bench_reference_loop --items 4 --device "$DEVICE" --threads 0 \
      --out "$OUT/reference_loop.json"
    "$PY" -m benchmarks.bench_real_size --device "$DEVICE" --out "$OUT/real_size.json"
    ;;
  *)
    echo "usage: tools/device/run.sh check | train ARCH [WORKERS] | bench" >&2
    exit 2
    ;;
esac
echo "done in $(( $(date +%s) - t0 )) s"
ls -la "$OUT"
