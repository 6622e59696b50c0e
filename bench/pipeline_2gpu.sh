#!/usr/bin/env bash
# The record pipeline on a multi-GPU machine at a short wallclock (issue 12's run 2): three seeds of
# the default preset through `pgolf record`, then size, budget, reproduce (eval-only from each
# artifact, val shards only) and verify --deep. Logs and tables under OUTDIR; OUTDIR/DONE at the end.
#
#   bash bench/pipeline_2gpu.sh DATA_PATH TOKENIZER_PATH OUTDIR [NPROC] [SECONDS]
#
# The bench text is not FineWeb: the val_bpb values are not comparable with the leaderboard.
set -uo pipefail
DATA=${1:?DATA_PATH}
TOKP=${2:?TOKENIZER_PATH}
DIR=${3:?OUTDIR}
NPROC=${4:-2}
SECS=${5:-60}
REC=$DIR/records
mkdir -p "$DIR"
T0=$(date +%s)
step() {  # name, command...: run, time it, keep its output
  local name=$1
  shift
  local t
  t=$(date +%s)
  "$@" >"$DIR/$name.txt" 2>&1
  local rc=$?
  echo "== $name: exit $rc in $(( $(date +%s) - t ))s (t=$(( $(date +%s) - T0 ))s)"
  tail -15 "$DIR/$name.txt"
}
# 196,608-token steps (a quarter of the record's batch, the per-GPU micro-batch of the single-GPU
# benches: compiled graphs are reused); EMA horizon scaled to a short run; a small TTT prefix
step record python3 -m pgolf record --out "$REC" --nproc "$NPROC" --seeds 42 314 999 --keep-going \
  --data-path "$DATA" --tokenizer-path "$TOKP" --author bench --github-id bench \
  --name "pipeline check ${NPROC}xH200 ${SECS}s" \
  --env PRESET=pr1855 MAX_WALLCLOCK_SECONDS="$SECS" TRAIN_BATCH_TOKENS=196608 EMA_DECAY=0.95 \
  WARMUP_STEPS=3 TRAIN_LOG_EVERY=25 VAL_LOSS_EVERY=0 PHASED_TTT_PREFIX_DOCS=40
step size python3 -m pgolf size "$REC"
step budget python3 -m pgolf budget "$REC"
step reproduce python3 -m pgolf reproduce "$REC" --data-path "$DATA" --tokenizer-path "$TOKP"
step verify python3 -m verify "$REC" --deep --data "$DATA" --tokenizer "$TOKP" --deep-timeout 400
# the full split's shape (50,000 documents, 47.85M CaseOps tokens; synthetic lengths) on 8 GPUs
python3 bench/synth_val.py --out /tmp/fullval >"$DIR/eval_budget.txt" 2>&1
python3 bench/eval_budget.py "$REC/train_seed42.log" --val "/tmp/fullval/fineweb_val_*.bin" --gpus 8 \
  --set PHASED_TTT_PREFIX_DOCS=2500 >>"$DIR/eval_budget.txt" 2>&1
touch "$DIR/DONE"
echo "pipeline done in $(( $(date +%s) - T0 ))s"
