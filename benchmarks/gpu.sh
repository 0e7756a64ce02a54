#!/usr/bin/env bash
# The GPU checks in one call on a lent device machine: DCGAN-64 training (float32, bf16, compiled) and sampling
# speed, r3gan-cats64-gpu and sngan-cifar10 training speed, and a short cats quality run with its grid.
#
# The device machine has Python 3.12, torch, torchvision, tensorboard, scipy and matplotlib, but no network, no
# torch-fidelity and none of ../shared. So, here, once (about 26 MB; .gpu is ignored by git):
#   python benchmarks/gpu_pack.py          # purrgan's wheel, torch-fidelity's, the yardstick, the cat faces
# then, with the device tool (carry: [".gpu"], timeout_s 600; it takes about 8 minutes):
#   bash benchmarks/gpu.sh                 # tables on stdout and in $OUT/device-results.md, the grid in $OUT
#   MINUTES=1.5 bash benchmarks/gpu.sh     # a shorter quality run
# and here, before spending device time, the same script end to end on the CPU with tiny sizes (the suite runs it):
#   bash benchmarks/gpu.sh --dry-run
set -uo pipefail
cd "$(dirname "$0")/.."
dry=""
[ "${1:-}" = "--dry-run" ] && dry="--dry-run"
gpu_dir=${GPU_DIR:-$PWD/.gpu}
out=${OUT:-/tmp/purrgan-gpu}
work=${WORK:-/tmp/purrgan-device}
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PURRGAN_DATA="$work/cache"

# ---- prerequisites, in seconds: one line per missing piece
missing=()
command -v "$python" >/dev/null 2>&1 || missing+=("$python: not found")
[ -f "$gpu_dir/cats64-kaggle.tar.gz" ] || missing+=("$gpu_dir/cats64-kaggle.tar.gz: missing (python benchmarks/gpu_pack.py copies it)")
[ -f "$gpu_dir/yardstick.pt" ] || missing+=("$gpu_dir/yardstick.pt: missing (python benchmarks/gpu_pack.py copies or trains it)")
ls "$gpu_dir"/wheels/purrgan-*.whl >/dev/null 2>&1 || missing+=("$gpu_dir/wheels/purrgan-*.whl: missing (python benchmarks/gpu_pack.py builds it)")
if command -v "$python" >/dev/null 2>&1; then
  ls "$gpu_dir"/wheels/torch_fidelity-*.whl >/dev/null 2>&1 || "$python" -c "import torch_fidelity" >/dev/null 2>&1 \
    || missing+=("torch-fidelity: neither installed nor carried in $gpu_dir/wheels (python benchmarks/gpu_pack.py downloads it)")
  "$python" -c "import torch, torchvision, tqdm, tensorboard, scipy, matplotlib, safetensors" >/dev/null 2>&1 \
    || missing+=("$python: cannot import torch, torchvision, tqdm, tensorboard, scipy, matplotlib and safetensors")
  if [ -z "$dry" ]; then
    "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1 \
      || missing+=("CUDA: torch sees no GPU (use --dry-run to check the script on a CPU)")
  fi
fi
mkdir -p "$out" "$work" 2>/dev/null && [ -w "$out" ] || missing+=("$out: cannot be written (set OUT)")
free_kb=$(df -Pk "$work" 2>/dev/null | awk 'NR == 2 {print $4}')
[ "${free_kb:-0}" -ge 2000000 ] || missing+=("$work: under 2 GB free (set WORK)")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'gpu.sh: %s\n' "${missing[@]}"
  exit 2
fi

# ---- the carried wheels, installed without a network into a folder of their own
site="$work/site"
rm -rf "$site"
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$site" "$gpu_dir"/wheels/*.whl || { echo "gpu.sh: could not install the wheels in $gpu_dir/wheels"; exit 2; }
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c "import purrgan, torch_fidelity; print('purrgan', purrgan.__version__, 'from', purrgan.__file__)" || exit 2
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader

"$python" benchmarks/device.py --gpu-dir "$gpu_dir" --out "$out" --work "$work" --minutes "${MINUTES:-2.5}" $dry
