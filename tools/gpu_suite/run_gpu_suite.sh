#!/usr/bin/env bash
# The GPU verification suite of d2ext, on a machine with a CUDA GPU: versions,
# the in-place build of d2ext._C with its CUDA kernel, the d2ext tests on CUDA
# (NaN-poisoned allocator, see tests/conftest.py), the MSDA benchmark at N = 2, 1
# and 8 beside the official Deformable-DETR kernel (staged in .official_msda/ by
# stage_official_msda.sh), the end-to-end model benchmark (tools/benchmark_model.py:
# ours with cpp and numba beside HF transformers' DeformableDetrForObjectDetection;
# needs detectron2 and its pure-Python dependencies, from .model_deps/ where the
# machine lacks them), and compute-sanitizer memcheck over the CUDA parity tests.
# tools/gpu_suite/README.md says what each step needs.
#
#   OUT=/some/dir bash tools/gpu_suite/run_gpu_suite.sh
#
# Every step's output goes to a log under $OUT (8 files at most) and its exit
# status to $OUT/summary.txt; a failed step does not stop the later ones, and the
# script exits 1 if any failed. Steps are cut off so that the whole run ends
# within SUITE_DEADLINE_S seconds (default 560); a step that finds no time left
# is skipped and counts as failed.
set -u -o pipefail

cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu_suite_out}
mkdir -p "$OUT"
DEADLINE=${SUITE_DEADLINE_S:-560}
PY=${PYTHON:-python3}
OFFICIAL_STAGED=.official_msda
OFFICIAL_SRC=/tmp/official_msda  # patched copy; the staged one stays as upstream has it

export PYTHONUNBUFFERED=1
export FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}  # for the visible GPU unless TORCH_CUDA_ARCH_LIST is set
export TORCH_EXTENSIONS_DIR=/tmp/torch_extensions
unset NUMBA_ENABLE_CUDASIM

NAMES=()
CODES=()

# step NAME LOG LIMIT_S CMD...: runs CMD with its output on stdout and appended to
# $OUT/LOG, under a timeout of LIMIT_S or the time left, whichever is less.
step() {
    local name=$1 log=$OUT/$2 limit=$3
    shift 3
    local left=$((DEADLINE - SECONDS)) rc
    ((limit > left)) && limit=$left
    {
        echo
        echo "=== $name ($(date -u +%H:%M:%S), ${SECONDS}s in, limit ${limit}s): $*"
    } | tee -a "$log"
    if ((limit < 20)); then
        echo "=== $name: skipped, no time left" | tee -a "$log"
        rc=125
    else
        # timeout runs programs, not functions: the step functions are exported (below)
        timeout --kill-after=10 "$limit" bash -c '"$@"' step "$@" 2>&1 | tee -a "$log"
        rc=$?
    fi
    echo "=== $name: exit $rc ($((SECONDS))s in)" | tee -a "$log"
    NAMES+=("$name")
    CODES+=("$rc")
    return "$rc"
}

versions() {
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu \
        --format=csv
    uname -a
    nvcc --version | tail -n 2
    gcc --version | head -n 1
    echo "ninja $(ninja --version 2>/dev/null || echo missing)"
    "$PY" - <<'EOF'
import importlib.metadata as md
import sys

import torch

print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
p = torch.cuda.get_device_properties(0)
print(f"{p.name}: sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB, "
      f"L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB")
for name in ("numba", "numba-cuda", "pytest", "setuptools", "ninja"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "missing")
EOF
}

build_d2ext() {
    rm -rf build d2ext/_C*.so
    "$PY" setup.py build_ext --inplace || return
    "$PY" -c "
import sys, d2ext
info = d2ext.available_backends()
for name, i in info.items():
    print(f'{name}: {i.available} {i.devices} {i.detail}')
sys.exit(0 if 'cuda' in info['cpp'].devices and 'cuda' in info['numba'].devices else 1)" || return
    # registers, shared memory, stack frame (spills) of each kernel
    cuobjdump --dump-resource-usage d2ext/_C*.so | grep -E 'Function|REG' || true
}

run_tests() {  # fails if CUDA is not visible, so that a pass means the CUDA parametrizations ran
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no GPU')" || return
    "$PY" -m pytest tests/d2ext -q -rs -p no:cacheprovider --durations=5
}

build_official() {
    [[ -d $OFFICIAL_STAGED/models/ops/src ]] || {
        echo "$OFFICIAL_STAGED/models/ops/src is missing: stage it (tools/gpu_suite/stage_official_msda.sh)"
        return 1
    }
    cat "$OFFICIAL_STAGED/STAGED"
    bash tools/gpu_suite/stage_official_msda.sh --patch "$OFFICIAL_STAGED" "$OFFICIAL_SRC" || return
    "$PY" -c "
import sys
sys.path.insert(0, 'tools')
import benchmark_msda
print(benchmark_msda.load_official('$OFFICIAL_SRC', verbose=True))" || return
    cuobjdump --dump-resource-usage "$TORCH_EXTENSIONS_DIR"/MultiScaleDeformableAttention/*.so | grep -E 'Function|REG' || true
}

benchmark() {  # benchmark ARGS...: with the official row when its build succeeded
    local official=()
    [[ $OFFICIAL_OK == 1 ]] && official=(--official-src "$OFFICIAL_SRC")
    "$PY" tools/benchmark_msda.py --device cuda --warmup 5 --repeats 20 "${official[@]}" "$@"
}

model_bench() {  # ours (cpp, numba) and HF, multi-scale, 800x1333: training at batch 2, inference at 1 and 4
    local deps=
    [[ -d .model_deps ]] && deps=$PWD/.model_deps:
    PYTHONPATH=${deps}$PWD/projects/DeformableDETR:$PWD${PYTHONPATH:+:$PYTHONPATH} "$PY" -c "
import detectron2, transformers, scipy
print('detectron2', detectron2.__version__, detectron2.__file__); print('transformers', transformers.__version__)" || {
        echo "detectron2/transformers/scipy not importable: install them or stage .model_deps (tools/gpu_suite/README.md)"
        return 1
    }
    PYTHONPATH=${deps}$PWD/projects/DeformableDETR:$PWD${PYTHONPATH:+:$PYTHONPATH} \
        "$PY" tools/benchmark_model.py --device cuda --variant multi_scale --warmup 2 --repeats 5
}

sanitize() {
    local cs
    cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    "$cs" --tool memcheck --error-exitcode 97 --print-limit 20 \
        "$PY" -m pytest tests/d2ext/test_ms_deform_attn.py -q -x -k cuda -p no:cacheprovider
}

export PY OFFICIAL_STAGED OFFICIAL_SRC
export -f versions build_d2ext run_tests build_official benchmark model_bench sanitize

step versions env.log 60 versions
step "build d2ext._C" build.log 240 build_d2ext
step "pytest tests/d2ext on CUDA" tests.log 240 run_tests
OFFICIAL_OK=0
step "build official MSDA kernel" official_build.log 180 build_official && OFFICIAL_OK=1
export OFFICIAL_OK
step "benchmark N=2" bench.log 150 benchmark --batch 2
step "benchmark N=1" bench.log 120 benchmark --batch 1
step "benchmark N=8" bench.log 150 benchmark --batch 8
step "benchmark N=2 again (spread), float32, cpp numba official" bench.log 90 benchmark --batch 2 --dtypes float32 --backends cpp numba
step "model benchmark (ours cpp/numba vs HF), multi-scale, 800x1333" model_bench.log 180 model_bench
step "compute-sanitizer memcheck, CUDA parity tests" sanitize.log 150 sanitize

# the tables last, where the reply's output tail shows them
echo
grep -E '^(device:|copy bandwidth|  [a-z]+:|\|)' "$OUT/bench.log"
echo
grep -E '^(device:|variant|  [a-z-]+:|Training|\||- )' "$OUT/model_bench.log"
failed=0
for code in "${CODES[@]}"; do
    [[ $code == 0 ]] || failed=1
done
{
    echo
    echo "step | exit"
    for i in "${!NAMES[@]}"; do
        echo "${NAMES[$i]} | ${CODES[$i]}"
    done
    echo "total ${SECONDS}s; $([[ $failed == 0 ]] && echo 'all steps passed' || echo 'SOME STEPS FAILED')"
} | tee "$OUT/summary.txt"
exit "$failed"
