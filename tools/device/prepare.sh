#!/usr/bin/env bash
# Here (the CPU machine with the project's venv): download, into .whl/, the wheels a GPU
# machine needs on top of its own image (PyTorch, numpy, pandas, pyarrow, safetensors ...
# are there; nnsight, datasets, pydantic and the transformers stack we pin are not).
# Versions are the ones installed in .venv, for CPython 3.12 on x86-64 Linux (the GPU
# machine's). Then run tools/device/run.sh there with `.whl` carried (see that file).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
# not in the GPU image, or there in a version our pins exclude
NAMES="nnsight transformers huggingface-hub tokenizers hf-xet datasets dill multiprocess pydantic pydantic-core
annotated-types typing-inspection greenlet websocket-client zstandard truststore tzdata httpx2 httpcore2"
specs=$("$PY" - $NAMES <<'PY'
import importlib.metadata as md, sys
print(" ".join(f"{n}=={md.version(n)}" for n in sys.argv[1:]))
PY
)
rm -rf .whl && mkdir -p .whl
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $specs
# the default synthetic benchmark, built here, travels too (a GPU machine then builds nothing)
HOME_DIR=${HONES_NN_HOME:-$HOME/.cache/hones_nn}
"$PY" -c "from hones_nn.data import resolve_benchmark; resolve_benchmark(None)"
cp -r "$HOME_DIR" .whl/home
ls .whl
du -sh .whl
