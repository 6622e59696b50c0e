#!/usr/bin/env bash
# GPU tests and benchmarks of the attention backends and fused kernels (issues 10 and 11), for the
# device machine (one H200). Everything is written under $OUT. See bench/notes-kernels.md for how
# the FlashAttention 4 wheels travel (the -libs-cu13 wheel is 92 MB: two halves, two calls).
#
#   bash bench/run_kernels_gpu.sh WHEELDIR PHASE
#
# PHASE (each fits one 10-minute call; run them in this order on one warm machine):
#   stash     keep WHEELDIR's files in /tmp/pgolf_fa4w (the first half of the cu13 wheel), then run
#             the GPU tests that need no FA4 (Triton kernels; cuDNN / SDPA / flex attention)
#   install   add WHEELDIR's files, reassemble the cu13 wheel, pip-install the FA4 wheels, then the
#             FA4 GPU tests and bench/attention_bench.py
#   steptime  bench/step_time.py: the pr1855 preset's compiled step, fa4 vs sdpa_cudnn, fused
#             kernels on/off, before and after recurrence (installs from /tmp first if needed)
#   all       install + every test + both benchmarks (no time limit)
set -uo pipefail

WHEELS=${1:?usage: bash bench/run_kernels_gpu.sh WHEELDIR stash|install|steptime|all}
PHASE=${2:?usage: bash bench/run_kernels_gpu.sh WHEELDIR stash|install|steptime|all}
OUT=${OUT:-./out}
STASH=/tmp/pgolf_fa4w
CU13=nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
mkdir -p "$OUT" "$STASH"
export PYTHONUNBUFFERED=1
# FA4 keeps its compiled kernels on disk, so later calls on the same warm machine skip the JIT
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1

env_report() {
  {
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c 'import torch, triton, sys; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__)'
    python3 -m pip list 2>/dev/null | grep -i -E "flash|cutlass|quack|tvm|dlpack|einops|cuda-bindings"
  } >>"$OUT/env.txt" 2>&1
}

stash_wheels() {
  if compgen -G "$WHEELS/*" >/dev/null; then
    cp -f "$WHEELS"/* "$STASH"/
  fi
  ls -l "$STASH" >>"$OUT/env.txt"
}

install_fa4() {
  if python3 -c 'import flash_attn.cute.interface' 2>/dev/null; then
    echo "FA4 already installed" | tee -a "$OUT/install.log"
    return 0
  fi
  stash_wheels
  if [ ! -f "$STASH/$CU13" ]; then
    if ! compgen -G "$STASH/cu13.part.*" >/dev/null; then
      echo "no $CU13 and no cu13.part.* in $STASH: carry the halves (notes-kernels.md)" | tee -a "$OUT/install.log"
      return 1
    fi
    cat "$STASH"/cu13.part.* >"$STASH/$CU13"
  fi
  (cd "$STASH" && sha256sum ./*.whl) >>"$OUT/install.log"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$STASH"/*.whl >>"$OUT/install.log" 2>&1
  python3 -c 'import flash_attn.cute.interface, cutlass; print("FA4 import ok, cutlass", cutlass.__version__)' \
    2>&1 | tee -a "$OUT/install.log"
}

run_tests() {  # $1: log name, rest: pytest arguments
  local name=$1
  shift
  timeout 560 python3 -m pytest -q -rs -s "$@" 2>&1 | tee "$OUT/$name.log" | tail -40
}

env_report
case "$PHASE" in
  stash)
    stash_wheels
    run_tests pytest_gpu_nofa4 tests/test_kernels_gpu.py tests/test_attention_gpu.py -k "not fa4"
    ;;
  install)
    install_fa4 || exit 1
    run_tests pytest_gpu_fa4 tests/test_attention_gpu.py -k "fa4 or auto or gpt"
    timeout 300 python3 bench/attention_bench.py --out "$OUT/attention_bench.md" 2>&1 | tee "$OUT/attention_bench.log" | tail -30
    ;;
  steptime)
    install_fa4 || echo "FA4 missing: its configs will say so" | tee -a "$OUT/step_time.log"
    timeout 590 python3 bench/step_time.py --preset pr1855 --budget-s 500 \
      --configs fa4:fused,sdpa_cudnn:fused,fa4:eager,sdpa_cudnn:eager \
      --out "$OUT/step_time.md" 2>&1 | tee "$OUT/step_time.log" | tail -30
    ;;
  all)
    install_fa4 || exit 1
    run_tests pytest_gpu tests/test_kernels_gpu.py tests/test_attention_gpu.py
    python3 bench/attention_bench.py --out "$OUT/attention_bench.md" 2>&1 | tee "$OUT/attention_bench.log" | tail -30
    python3 bench/step_time.py --preset pr1855 --budget-s 3600 --out "$OUT/step_time.md" 2>&1 \
      | tee "$OUT/step_time.log" | tail -30
    ;;
  *)
    echo "unknown phase $PHASE: expected stash, install, steptime or all" >&2
    exit 2
    ;;
esac
