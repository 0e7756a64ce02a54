#!/usr/bin/env bash
# Issue 15, section 7 on a lent GPU machine, in as few device calls as the 15-minute device budget allows.
# The device machine has torch, torchvision, tensorboard, scipy, matplotlib, safetensors and tqdm, but no
# network and none of ../shared; purrgan runs from src/ there (torch-fidelity is only needed for Inception FID).
#
# Here, once, before the calls (the archives travel in the ignored folder .gpu, at most 64 MiB in all):
#   mkdir -p .gpu && cp ../shared/data/cats64-kaggle.tar.gz ../shared/data/cifar10-jpg.tar.gz .gpu/
#   grep -qx '/.gpu/' .git/info/exclude || echo /.gpu/ >> .git/info/exclude
# Then, with the device tool (carry: [".gpu", "benchmarks/.cache"], so the yardstick is not retrained):
#   bash benchmarks/gpu.sh throughput                 # ~4 min: training + sampling, with and without compile
#   MINUTES=1.5 bash benchmarks/gpu.sh cats           # ~3 min per recipe: best-cats64 and r3gan-cats64-gpu
#   MINUTES=1.5 bash benchmarks/gpu.sh cifar          # ~3 min per recipe: dcgan-cifar10 and r3gan-cifar10-gpu
#   RECIPES="r3gan-cats64-gpu" MINUTES=8 bash benchmarks/gpu.sh cats   # the "near real-vs-real in 10 minutes" target
# Each part writes its table to $OUT (the device tool brings it back) and prints it.
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:?usage: bash benchmarks/gpu.sh throughput|cats|cifar}
out=${OUT:-/tmp/purrgan-gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PURRGAN_SHARED_DATA="$PWD/.gpu"
export PURRGAN_DATA=/tmp/purrgan-data  # decoded data sets are cached here, not in the user's home
python3 -c "import torch, purrgan; print('torch', torch.__version__, torch.cuda.get_device_name(0))" || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
minutes=${MINUTES:-1.5}
case "$part" in
  throughput)
    # Batch 2048: 100k images/s is ~50 steps/s at this batch, within reach of kernel launch overhead.
    timeout 540 python3 benchmarks/throughput.py --device cuda --compile --batch 2048 --steps 40 --repeats 3 \
        --warmup 20 --images 9303 --workers 12 --sample-num 2000000 --sample-batch 16384 2>&1 | tee "$out/throughput.txt" ;;
  cats)
    timeout 570 python3 benchmarks/quality.py --yardstick-epochs 6 --eval-num 2000 --data "$PWD/.gpu/cats64-kaggle.tar.gz" \
        --recipes ${RECIPES:-best-cats64 r3gan-cats64-gpu} --minutes "$minutes" --out /tmp/q-cats \
        --json "$out/quality-cats.json" 2>&1 | tee "$out/quality-cats.txt" ;;
  cifar)
    timeout 570 python3 benchmarks/quality.py --yardstick-epochs 6 --eval-num 2000 --data "$PWD/.gpu/cifar10-jpg.tar.gz" \
        --recipes ${RECIPES:-dcgan-cifar10 r3gan-cifar10-gpu} --minutes "$minutes" --out /tmp/q-cifar \
        --json "$out/quality-cifar.json" 2>&1 | tee "$out/quality-cifar.txt" ;;
  *) echo "unknown part '$part': use throughput, cats or cifar"; exit 2 ;;
esac
status=$?
# One grid per run (EMA weights where kept), for the README gallery: at most 8 files come back.
for run in /tmp/q-"$part"/*/; do
  [ -f "$run/checkpoints/last.safetensors" ] && python3 -m purrgan sample "$run" --num 64 --seed 0 --out "$out/$(basename "$run").png"
done
exit $status
