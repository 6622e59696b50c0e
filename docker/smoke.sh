#!/usr/bin/env bash
# Smoke test of the whole trainer path on CPU, in minutes: the image build runs it, and so can a
# host (`bash docker/smoke.sh` from a checkout with the project installed).
#
#   1. text the project generates (Python's own pydoc topics) -> `pgolf data --from-text`:
#      a SentencePiece tokenizer and shards in the official format;
#   2. `pgolf record` with PRESET=tiny, one seed, one process through torchrun: log, artifact,
#      submission.json;
#   3. `pgolf reproduce`: eval-only from the saved artifact with only the val shards reachable,
#      val_bpb compared with the logged one.
#
# Env: PYTHON (default python3), SMOKE_WORK (default a fresh temp dir, removed unless
# SMOKE_KEEP=1), SMOKE_SEED (default 1337), SMOKE_SCRIPT (default submission/train_gpt.py),
# SMOKE_ITERATIONS (training steps, default 20: enough to exercise every phase, not to learn).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
SEED=${SMOKE_SEED:-1337}
ITERATIONS=${SMOKE_ITERATIONS:-20}
SCRIPT=${SMOKE_SCRIPT:-submission/train_gpt.py}
if [[ -n ${SMOKE_WORK:-} ]]; then
    WORK=$SMOKE_WORK
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgolf-smoke.XXXXXX")
fi
if [[ ${SMOKE_KEEP:-0} != 1 ]]; then
    trap 'rm -rf "$WORK"' EXIT
fi

fail() { echo "smoke: FAIL: $*" >&2; exit 1; }

[[ -f $SCRIPT ]] || fail "$SCRIPT not found (python -m pgolf pack builds it)"
start=$SECONDS

echo "== smoke 1/3: data from pydoc topics -> $WORK/data"
"$PY" -c 'import pydoc_data.topics as t; print("\n\n".join(t.topics[k] for k in sorted(t.topics)))' \
    > "$WORK/corpus.txt"
"$PY" -m pgolf data --from-text "$WORK/corpus.txt" --out "$WORK/data" --vocab-size 1024 \
    | tee "$WORK/data.txt"
ready=$(grep '^data ready: ' "$WORK/data.txt" | tail -n 1) || fail "pgolf data printed no 'data ready:' line"
for kv in ${ready#data ready: }; do
    case $kv in
        DATA_PATH=*) data_path=${kv#DATA_PATH=} ;;
        TOKENIZER_PATH=*) tokenizer_path=${kv#TOKENIZER_PATH=} ;;
        VOCAB_SIZE=*) vocab_size=${kv#VOCAB_SIZE=} ;;
    esac
done
[[ -n ${data_path:-} && -n ${tokenizer_path:-} && -n ${vocab_size:-} ]] \
    || fail "cannot read DATA_PATH/TOKENIZER_PATH/VOCAB_SIZE from: $ready"

records="$WORK/records/smoke"
echo "== smoke 2/3: record, PRESET=tiny, $ITERATIONS steps, seed $SEED, 1 process -> $records"
"$PY" -m pgolf record --out "$records" --script "$SCRIPT" --seeds "$SEED" --nproc 1 \
    --data-path "$data_path" --tokenizer-path "$tokenizer_path" --vocab-size "$vocab_size" \
    --env PRESET=tiny "ITERATIONS=$ITERATIONS" --author "pgolf smoke" --github-id pgolf-smoke --name "docker smoke test" \
    --blurb "docker/smoke.sh: PRESET=tiny on CPU"
for f in "train_seed$SEED.log" "train_seed$SEED.ptz" submission.json train_gpt.py; do
    [[ -s $records/$f ]] || fail "$records/$f missing or empty after pgolf record"
done

echo "== smoke 3/3: reproduce from the artifact, val shards only"
"$PY" -m pgolf reproduce "$records" --data-path "$data_path" --tokenizer-path "$tokenizer_path" \
    || fail "pgolf reproduce did not reproduce the logged val_bpb"

echo "smoke: ok ($((SECONDS - start)) s): data -> record -> reproduce on CPU"
