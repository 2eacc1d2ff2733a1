#!/usr/bin/env bash
# The wheels a lent GPU machine's image lacks for lungnet (Python 3.12, x86-64), into .whl/ (git-ignored), for
# bench/gpu_check.sh. Run here, where the package registry answers: bash bench/gpu_wheels.sh
# Pure-Python packages published only as source (antlr4-python3-runtime, grad-cam) are built into wheels here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d .whl albucore==0.0.24 albumentations==2.0.8 annotated-types==0.8.0 hydra-core==1.3.8 omegaconf==2.3.1 \
  pydantic==2.14.4 pydantic_core==2.50.5 simsimd==6.5.16 stringzilla==5.3.2 ttach==0.0.3 typing-inspection==0.4.5 \
  typing_extensions==4.16.0
"$PY" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3 grad-cam==1.5.7
ls .whl
