#!/usr/bin/env bash
# Issue #27's GPU measurements in one call on a lent GPU machine (a few minutes, not yet timed there; never CI):
#   1. here: bash bench/gpu_wheels.sh            (the packages the machine's image lacks, into .whl/)
#   2. the device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
# It writes to $OUT (what comes back): card.txt (GPU, driver, torch), gpu_parts.json (the normalisation, the OOD
# gate's statistics and axes and their NCCL reduce on the device, each checked against the host:
# bench/perf/gpu_parts.py), throughput_cpu.json and throughput_gpu.json (resnet50 at 224 px in bf16: training steps
# on device tensors against Trainer.fit fed by lungnet's prepared-store loader with augment=xray on 12 CPU workers,
# and with data.gpu_augment=true: bench/perf/throughput.py), check.log. Record the figures with the card's name.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg PYTHONPATH=$PWD
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing the wheels of .whl/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
fi
rc=0
WORKERS=${WORKERS:-12}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"
  nproc
} > "$OUT/card.txt" 2>&1
cat "$OUT/card.txt"
python3 -m bench.perf.gpu_parts --out "$OUT/gpu_parts.json" 2>&1 | tee "$OUT/check.log" || rc=1
for aug in cpu gpu; do
  flag=""
  [ "$aug" = gpu ] && flag="--gpu-augment"
  python3 -m bench.perf.throughput --data-root /tmp/lungnet-synthetic --source synthetic \
    --data-options n_per_class=1000 size=256 --models resnet50 --batch-size 128 --image-size 224 \
    --precision bf16-mixed --workers "$WORKERS" --augment xray --epochs 6 $flag \
    --cache-dir /tmp/lungnet-synthetic-cache --out "$OUT/throughput_$aug.json" 2>&1 | tee -a "$OUT/check.log" || rc=1
done
ls -la "$OUT"
exit $rc
