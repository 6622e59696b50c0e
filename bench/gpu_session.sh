#!/usr/bin/env bash
# The GPU runs of issues 10, 11 and 12, as back-to-back calls on one warm nvidia-h200-x2 machine
# (2 GPUs; each call <= 10 minutes; logs and tables under $OUT). Each step has its own timeout, so a
# failing step costs its time, not the call.
#
#   A  carry .gpu .whl/base .whl/fa4a: set up, bench data (linux-doc text: sp8192 + CaseOps), stash
#      the first half of the FA4 libs.  GPU0: kernel/attention/TTT GPU tests without FA4, then the
#      parity harness (pr1855, pr1493, pr1774 vs the reference scripts).  GPU1: ours (pr1493) vs the
#      1.0810 reference on documents in file order, 150 steps of 196,608 tokens.
#   B  carry .whl/fa4b (+ .gpu .whl/base when the machine is cold): FA4 installed.  GPU0: FA4 tests,
#      attention benchmark, the compiled step time fa4 vs cuDNN SDPA before/after recurrence.  GPU1:
#      ours (pr1855) vs the 1.0611 reference on the CaseOps text, one after the other (speed).
#   C  the three-seed pipeline on both GPUs (record -> size -> budget -> reproduce -> verify --deep),
#      started detached; the call waits for it as long as it may.
#   D  collect what C left running.
set -uo pipefail
PHASE=${1:?usage: bash bench/gpu_session.sh A|B|C|D}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1
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

case "$PHASE" in
A)
  env_report
  stash_fa4a >"$OUT/stash.log" 2>&1
  ensure_setup || exit 1
  (
    export CUDA_VISIBLE_DEVICES=0
    stamp "gpu0: tests"
    timeout 200 python3 -m pytest -q -rs tests/test_kernels_gpu.py tests/test_attention_gpu.py -k "not fa4" \
      >"$OUT/pytest_gpu_nofa4.log" 2>&1
    timeout 150 python3 -m pytest -q -rs tests/test_ttt_lora.py tests/test_ttt_phased.py -k cuda \
      >"$OUT/pytest_gpu_ttt.log" 2>&1
    stamp "gpu0: parity"
    for c in pr1855:sota pr1493:r1493 pr1774:pr1774; do
      p=${c%%:*}; r=${c##*:}
      timeout 100 python3 bench/parity.py --preset "$p" --ref ".gpu/ref/${r}_train_gpt.py" --device cuda \
        --out "$OUT/parity-h200-$p.md" >"$OUT/parity-h200-$p.log" 2>&1
    done
    stamp "gpu0: done"
  ) &
  (
    stamp "gpu1: ordered-data comparison"
    timeout 470 python3 bench/ref_compare.py --ref .gpu/ref/r1493_train_gpt.py --preset pr1493 --data "$SP" \
      --tokenizer "$TOK" --steps 150 --val-every 50 --gpus 1 --out /tmp/cmp1493 --timeout 460 \
      --ref-env "${R1493_ENV[@]}" --md "$OUT/ordered-pr1493.md" >"$OUT/ordered-pr1493.console" 2>&1
    cp /tmp/cmp1493/ours.log "$OUT/ordered-ours.log" 2>/dev/null
    cp /tmp/cmp1493/ref_work/logs/ref.txt "$OUT/ordered-ref.txt" 2>/dev/null
    stamp "gpu1: done"
  ) &
  wait
  tail -3 "$OUT"/pytest_gpu_*.log; cat "$OUT"/parity-h200-*.md 2>/dev/null | grep -E "^\|" | head -30
  cat "$OUT/ordered-pr1493.md" 2>/dev/null || tail -20 "$OUT/ordered-pr1493.console"
  ;;
B)
  env_report
  ensure_setup || exit 1
  install_fa4 >"$OUT/install_fa4.log" 2>&1 || { tail -20 "$OUT/install_fa4.log"; }
  stamp "fa4: $(tail -1 "$OUT/install_fa4.log")"
  (
    export CUDA_VISIBLE_DEVICES=0
    timeout 150 python3 -m pytest -q -rs tests/test_attention_gpu.py -k "fa4 or auto or gpt" \
      >"$OUT/pytest_gpu_fa4.log" 2>&1
    timeout 90 python3 bench/attention_bench.py --out "$OUT/attention_bench.md" >"$OUT/attention_bench.log" 2>&1
    stamp "gpu0: step time"
    timeout 300 python3 bench/step_time.py --preset pr1855 --budget-s 280 \
      --configs fa4:fused,sdpa_cudnn:fused --out "$OUT/step_time.md" >"$OUT/step_time.log" 2>&1
    stamp "gpu0: done"
  ) &
  (
    stamp "gpu1: pr1855 vs the 1.0611 reference"
    timeout 500 python3 bench/ref_compare.py --ref .gpu/ref/sota_train_gpt.py --preset pr1855 --data "$CO" \
      --tokenizer "$COTOK" --steps 120 --val-every 60 --gpus 1 --out /tmp/cmp1855 --timeout 490 \
      --ref-env "${SOTA_ENV[@]}" --md "$OUT/speed-pr1855.md" >"$OUT/speed-pr1855.console" 2>&1
    cp /tmp/cmp1855/ours.log "$OUT/speed-ours.log" 2>/dev/null
    cp /tmp/cmp1855/ref_work/logs/ref.txt "$OUT/speed-ref.txt" 2>/dev/null
    stamp "gpu1: done"
  ) &
  wait
  tail -3 "$OUT/pytest_gpu_fa4.log"; cat "$OUT/attention_bench.md" "$OUT/step_time.md" 2>/dev/null | grep -E "^\|"
  cat "$OUT/speed-pr1855.md" 2>/dev/null || tail -20 "$OUT/speed-pr1855.console"
  ;;
C)
  env_report
  ensure_setup || exit 1
  install_fa4 >/dev/null 2>&1 || true
  mkdir -p /tmp/pipe
  setsid nohup bash bench/pipeline_2gpu.sh "$CO" "$COTOK" /tmp/pipe >/tmp/pipe/console.txt 2>&1 < /dev/null &
  for _ in $(seq 1 110); do
    sleep 5
    [ -f /tmp/pipe/DONE ] && break
  done
  cp /tmp/pipe/*.txt /tmp/pipe/*.md "$OUT/" 2>/dev/null
  tail -25 /tmp/pipe/console.txt
  ;;
D)
  for _ in $(seq 1 100); do
    [ -f /tmp/pipe/DONE ] && break
    sleep 5
  done
  cp /tmp/pipe/*.txt /tmp/pipe/*.md "$OUT/" 2>/dev/null
  (cd /tmp/pipe && tar czf "$OUT/pipeline-logs.tgz" records/*.log records/*.json records/README.md reproduce*.txt 2>/dev/null)
  tail -40 /tmp/pipe/console.txt
  ;;
esac
stamp "phase $PHASE done"
