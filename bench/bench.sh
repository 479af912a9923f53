#!/usr/bin/env bash
# Runs on the GPU machine (make bench): the Benchmark RPC on a Llama-2-7B-shaped model. KERNEL mode on the
# llama-2-7b shapes across batch sizes (JSON + plot), SINGLE_QUERY at 128 and 1024 prompt tokens, then BATCH_SWEEP
# at 1, 8 and 32 concurrent sequences.
# Every step has its own time limit and writes straight into $OUT (default bench/out), so a run cut short still
# returns what it measured; bench/bench_report.py turns the files into bench/results/. At most 8 files (8 here),
# as the device tool returns no more: `make engine-check` (its 2 files) runs as a call of its own.
set -uo pipefail
OUT=${OUT:-bench/out}
ARCH=${ARCH:-llama-2-7b}  # ARCH=tiny runs the same steps quickly, e.g. on a CPU machine
BATCHES=${BATCHES:-1,2,4,8,16,32,64,128,256,512}
TARGET=127.0.0.1:50062
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"

bench() {  # $1: output file stem, then awqctl bench arguments; the JSON report goes to $OUT/$1.json
  local stem=$1
  shift
  log "awqctl bench $*"
  timeout 300 "${AWQCTL[@]}" bench --json "$@" > "$OUT/$stem.json" 2>> "$OUT/steps.log"
  log "exit code $?"
}

log "device"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$OUT/steps.log"
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" \
  | tee -a "$OUT/steps.log"

log "synthesize a $ARCH-shaped checkpoint"
mkdir -p "$WORK/models"
timeout 180 "${AWQD[@]}" synth --arch "$ARCH" --out "$WORK/models/$ARCH" 2>&1 | tail -3 | tee -a "$OUT/steps.log"

log "boot"
"${AWQD[@]}" serve --listen "$TARGET" --cache-dir "$WORK/cache" --model-root "$WORK/models" \
  --model "synth=$ARCH" --selection-budget 60 2> "$OUT/daemon.log" &
DAEMON=$!
if ! wait_serving 240; then
  log "the daemon did not reach SERVING within 240 s"
  exit 1
fi
timeout 30 "${AWQCTL[@]}" describe --json > "$OUT/describe.json"

bench kernel --mode kernel --arch "$ARCH" --batch "$BATCHES" --plot "$OUT/kernel.png"
bench single-query-128 --mode single-query --model synth --prompt-tokens 128 --new-tokens 128
bench single-query-1024 --mode single-query --model synth --prompt-tokens 1024 --new-tokens 128
bench batch-sweep --mode batch-sweep --model synth --batch 1,8,32 --prompt-tokens 128 --new-tokens 128

kill -TERM $DAEMON
timeout 60 tail --pid=$DAEMON -f /dev/null || { log "daemon did not stop within 60 s"; kill -9 $DAEMON; }
wait $DAEMON
log "daemon exit code $?"
log "done"
