#!/usr/bin/env bash
# The GPU runs of issues 10 and 11, as back-to-back calls on one warm nvidia-h200 machine (each
# call <= 10 minutes; logs and tables under $OUT). Each step has its own timeout, so a failing step
# costs its time, not the call. Multi-GPU runs: bench/pipeline_2gpu.sh.
#
#   A  carry .gpu .whl/base .whl/fa4a: set up, bench data (linux-doc text: sp8192 + CaseOps), stash
#      the first half of the FA4 libs; GPU tests without FA4; the parity harness (pr1855, pr1493,
#      pr1774 vs the reference scripts)
#   B  carry .whl/fa4b: FA4 installed; its tests; attention benchmark; compiled step time fa4 vs cuDNN
#   C  ours (pr1855) vs the 1.0611 reference (speed, val_bpb)
#   E  the strict final evaluation of C's artifact (phased LoRA TTT), extrapolated to the full
#      split on 8 GPUs
#   D  ours (pr1493) vs the 1.0810 reference on documents in file order
set -uo pipefail
PHASE=${1:?usage: bash bench/gpu_session.sh A|B|C|D}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1
export PYTHONPATH="$PWD:${PYTHONPATH:-}"  # the repo, not installed there
# shellcheck source=bench/device_setup.sh
source bench/device_setup.sh
BENCH=/tmp/bench
SP=$BENCH/datasets/text_sp8192
CO=$BENCH/datasets/text_sp8192_caseops
TOK=$BENCH/tokenizers/fineweb_8192_bpe.model
COTOK=$BENCH/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

ensure_setup() {
  if [ ! -f /tmp/.pgolf_setup ]; then
    setup_base >"$OUT/setup.log" 2>&1 || { cat "$OUT/setup.log"; return 1; }
    build_bench_data "$BENCH" --caseops >>"$OUT/setup.log" 2>&1 || { tail -20 "$OUT/setup.log"; return 1; }
    touch /tmp/.pgolf_setup
  else
    export PATH="/tmp/lrz/usr/bin:$PATH"
    export LD_LIBRARY_PATH="/tmp/lrz/usr/lib/x86_64-linux-gnu:/tmp/lrz/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
  fi
  stamp "setup ok: $(tail -2 "$OUT/setup.log" 2>/dev/null | tr '\n' ' ')"
}

env_report() {
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'
    nproc
  } >"$OUT/env_$PHASE.txt" 2>&1
}

# the record's run settings (its README's command), for the 1.0611 reference script
SOTA_ENV=(CASEOPS_ENABLED=1 EMBED_BITS=7 MATRIX_LR=0.026 MIN_LR=0.1 MLP_CLIP_SIGMAS=11.5 ATTN_CLIP_SIGMAS=13.0
  EMBED_CLIP_SIGMAS=14.0 GRAD_CLIP_NORM=0.3 MUON_BACKEND_STEPS=5 WARMDOWN_FRAC=0.85 BETA2=0.99
  SPARSE_ATTN_GATE_SCALE=0.5 GATED_ATTN_QUANT_GATE=1 SPARSE_ATTN_GATE_ENABLED=1 GATE_WINDOW=12
  SMEAR_GATE_ENABLED=1 LQER_ENABLED=1 LQER_ASYM_ENABLED=1 LQER_RANK=4 LQER_FACTOR_BITS=4 LQER_ASYM_GROUP=64
  LQER_TOP_K=3 FUSED_CE_ENABLED=1 GPTQ_CALIBRATION_BATCHES=16 PARALLEL_START_LAYER=8 MUON_MOMENTUM=0.97)
R1493_ENV=(QK_GAIN_INIT=5.25)

side_by_side() {  # name ref preset data tokenizer steps val_every [ref K=V...]: ours vs a reference
  local name=$1 ref=$2 preset=$3 data=$4 tok=$5 steps=$6 every=$7
  shift 7
  timeout 550 python3 bench/ref_compare.py --ref "$ref" --preset "$preset" --data "$data" --tokenizer "$tok" \
    --steps "$steps" --val-every "$every" --gpus 0 --out "/tmp/$name" --timeout 540 --ref-env "$@" \
    --md "$OUT/$name.md" >"$OUT/$name.console" 2>&1
  cp "/tmp/$name/ours.log" "$OUT/$name-ours.log" 2>/dev/null
  cp "/tmp/$name/ours.console.txt" "/tmp/$name/ref.console.txt" "$OUT/" 2>/dev/null
  cat "$OUT/$name.md" 2>/dev/null || tail -20 "$OUT/$name.console"
}

short_run() {  # [K=V...]: a 6-step eager pr1855 run to /tmp/f/short.ptz
  mkdir -p /tmp/f
  env PRESET=pr1855 COMPILE=0 ITERATIONS=6 WARMUP_STEPS=0 MAX_WALLCLOCK_SECONDS=0 GPTQ_RESERVE_SECONDS=0 \
    TRAIN_BATCH_TOKENS=196608 TTT_ENABLED=0 PREQUANT_EVAL=0 VAL_LOSS_EVERY=0 DATA_PATH="$CO" \
    TOKENIZER_PATH="$COTOK" OUTPUT_DIR=/tmp/f RUN_ID=short "$@" timeout 150 python3 submission/train_gpt.py
}

strict_eval() {  # artifact: EVAL_ONLY under the strict timer, then the extrapolation to 8 GPUs
  python3 bench/synth_val.py --out /tmp/fullval >"$OUT/eval_budget.txt" 2>&1
  env PRESET=pr1855 EVAL_ONLY=1 ARTIFACT="$1" DATA_PATH="$CO" TOKENIZER_PATH="$COTOK" OUTPUT_DIR="$OUT" \
    RUN_ID=evalonly PHASED_TTT_PREFIX_DOCS=40 timeout $(( 540 - ($(date +%s) - T0) )) \
    python3 submission/train_gpt.py >"$OUT/evalonly.console" 2>&1
  grep -E "eval_part|ttt_part|total_eval|final" "$OUT/evalonly.log" 2>/dev/null | tail -14
  timeout 40 python3 bench/eval_budget.py "$OUT/evalonly.log" --val "/tmp/fullval/fineweb_val_*.bin" --gpus 8 \
    --set PHASED_TTT_PREFIX_DOCS=2500 >>"$OUT/eval_budget.txt" 2>&1
  tail -16 "$OUT/eval_budget.txt"
}

case "$PHASE" in
A)  # set up; GPU tests without FA4; parity
  env_report
  stash_fa4a >"$OUT/stash.log" 2>&1
  ensure_setup || exit 1
  stamp "tests"
  timeout 170 python3 -m pytest -q -rs tests/test_kernels_gpu.py tests/test_attention_gpu.py -k "not fa4" \
    >"$OUT/pytest_gpu_nofa4.log" 2>&1
  timeout 120 python3 -m pytest -q -rs tests/test_ttt_lora.py tests/test_ttt_phased.py -k cuda \
    >"$OUT/pytest_gpu_ttt.log" 2>&1
  stamp "parity"
  for c in pr1855:sota pr1493:r1493 pr1774:pr1774; do
    p=${c%%:*}; r=${c##*:}
    timeout 90 python3 bench/parity.py --preset "$p" --ref ".gpu/ref/${r}_train_gpt.py" --device cuda \
      --out "$OUT/parity-h200-$p.md" >"$OUT/parity-h200-$p.log" 2>&1
    stamp "parity $p: $(tail -1 "$OUT/parity-h200-$p.log")"
  done
  tail -3 "$OUT"/pytest_gpu_*.log; grep -h -E "^\|" "$OUT"/parity-h200-*.md 2>/dev/null | head -30
  ;;
B)  # FA4: install, tests, attention benchmark, compiled step time fa4 vs cuDNN SDPA
  env_report
  ensure_setup || exit 1
  install_fa4 >"$OUT/install_fa4.log" 2>&1 || tail -20 "$OUT/install_fa4.log"
  stamp "fa4: $(tail -1 "$OUT/install_fa4.log")"
  timeout 150 python3 -m pytest -q -rs tests/test_attention_gpu.py -k "fa4 or auto or gpt" \
    >"$OUT/pytest_gpu_fa4.log" 2>&1
  stamp "attention bench"
  timeout 80 python3 bench/attention_bench.py --out "$OUT/attention_bench.md" >"$OUT/attention_bench.log" 2>&1
  stamp "step time"
  timeout 300 python3 bench/step_time.py --preset pr1855 --budget-s 280 \
    --configs fa4:fused,sdpa_cudnn:fused --out "$OUT/step_time.md" >"$OUT/step_time.log" 2>&1
  tail -3 "$OUT/pytest_gpu_fa4.log"; grep -h -E "^\|" "$OUT/attention_bench.md" "$OUT/step_time.md" 2>/dev/null
  tail -5 "$OUT/step_time.log"
  ;;
C)  # ours (pr1855) vs the 1.0611 reference, one after the other on this GPU
  env_report
  ensure_setup || exit 1
  install_fa4 >/dev/null 2>&1 || true
  side_by_side speed-pr1855 .gpu/ref/sota_train_gpt.py pr1855 "$CO" "$COTOK" 100 50 "${SOTA_ENV[@]}"
  ;;
E)  # the strict final evaluation (phased LoRA TTT, compiled) of C's artifact, extrapolated
  env_report
  ensure_setup || exit 1
  install_fa4 >/dev/null 2>&1 || true
  strict_eval /tmp/speed-pr1855/ours.ptz
  ;;
D)  # ours (pr1493, seeded shuffled windows) vs the 1.0810 reference on documents in file order
  env_report
  ensure_setup || exit 1
  side_by_side ordered-pr1493 .gpu/ref/r1493_train_gpt.py pr1493 "$SP" "$TOK" 100 25 "${R1493_ENV[@]}"
  ;;
F)  # cold machine, no FA4: a short eager pr1855 run to an artifact, its strict evaluation, and a
    # few steps of the 1.0611 reference (to keep its error if it fails again)
  env_report
  ensure_setup || exit 1
  short_run >"$OUT/short.console" 2>&1 || short_run COMPRESSOR=brotli >"$OUT/short_brotli.console" 2>&1
  cp /tmp/f/short.log "$OUT/" 2>/dev/null
  strict_eval /tmp/f/short.ptz
  left=$(( 570 - ($(date +%s) - T0) ))
  if [ "$left" -gt 30 ]; then
    timeout "$left" python3 bench/ref_compare.py --ref .gpu/ref/sota_train_gpt.py --only ref --preset pr1855 \
      --data "$CO" --tokenizer "$COTOK" --steps 3 --val-every 0 --gpus 0 --out /tmp/fref --timeout "$left" \
      --ref-env "${SOTA_ENV[@]}" >"$OUT/ref_short.txt" 2>&1
    cp /tmp/fref/ref.console.txt "$OUT/ref.console.txt" 2>/dev/null
  fi
  ;;
esac
stamp "phase $PHASE done"
# one archive: a call brings back at most 8 files
(cd "$OUT" && find . -maxdepth 1 -type f ! -name '*.tgz' -print0 | tar czf "gpu_$PHASE.tgz" --null -T - \
  && find . -maxdepth 1 -type f ! -name '*.tgz' -delete)
