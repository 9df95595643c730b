#!/usr/bin/env bash
# GPU figures in one prepared run of about 3 minutes (at most 5): nextchar train against a bare
# PyTorch loop for 2x512 and 3x1024 LSTMs (batch 64 x seq 128), and checkpoints moved between
# the GPU and the CPU. Installs nothing from the network. Output also goes to $OUT/gpu.txt when
# OUT is set.
#
#   bench/gpu.sh                        # on a machine with a CUDA GPU
#   bench/gpu.sh --device cpu --quick   # a dry run of every step on the CPU, tiny sizes
#   bench/gpu.sh --compile              # also time nextchar train --compile (adds ~1-2 min)
#
# nextchar's own dependencies besides torch (numpy, safetensors, tqdm) must be importable; if they
# are not, wheels in $NEXTCHAR_WHEELS (a folder) are installed from there with --no-index.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"

if ! python -c "import numpy, safetensors, tqdm" 2>/dev/null; then
    if [ -n "${NEXTCHAR_WHEELS:-}" ]; then
        python -m pip install -q --no-index --find-links "$NEXTCHAR_WHEELS" numpy safetensors tqdm
    else
        echo "missing dependencies: $(python -c 'import importlib.util as u; print(" ".join(m for m in ("numpy", "safetensors", "tqdm") if u.find_spec(m) is None))'); set NEXTCHAR_WHEELS to a folder of their wheels" >&2
        exit 2
    fi
fi
if ! python -c "import nextchar" 2>/dev/null; then
    python -m pip install -q -e . --no-deps --no-build-isolation
fi

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    timeout 300 python bench/gpu_bench.py "$@" 2>&1 | tee "$OUT/gpu.txt"
else
    timeout 300 python bench/gpu_bench.py "$@"
fi
