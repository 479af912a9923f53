#!/usr/bin/env bash
# Runs on the GPU machine (make gpu-check): discovery, kernel selection and generation with a 7B-shaped model.
# Every step has its own time limit and writes straight into $OUT (default bench/out), so a run cut short still
# returns what it measured; bench/gpu_report.py turns the files into bench/results/. At most 8 files, as the
# device tool returns no more.
set -uo pipefail
OUT=${OUT:-bench/out}
ARCH=${ARCH:-llama-2-7b}  # ARCH=tiny runs the same steps quickly, e.g. on a CPU machine
TARGET=127.0.0.1:50061
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"

boot() {  # $1: label
  local started
  started=$(date +%s.%N)
  "${AWQD[@]}" serve --listen "$TARGET" --cache-dir "$WORK/cache" --model-root "$WORK/models" \
    --model "synth=$ARCH" --selection-budget 60 2> "$OUT/daemon-$1.log" &
  DAEMON=$!
  if ! wait_serving 240; then
    log "boot $1 did not reach SERVING within 240 s"
    return 1
  fi
  log "$(python3 -c "print('boot $1: %.1f s to SERVING' % ($(date +%s.%N) - $started))")"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader 2> /dev/null | sed "s/^/gpu memory used after boot $1: /" \
    | tee -a "$OUT/steps.log" || true
}

stop() {
  kill -TERM $DAEMON
  timeout 60 tail --pid=$DAEMON -f /dev/null || { log "daemon did not stop within 60 s"; kill -9 $DAEMON; }
  wait $DAEMON
  log "daemon exit code $?"
}

log "device"
nvidia-smi --query-gpu=name,uuid,compute_cap,driver_version,memory.total,memory.used --format=csv > "$OUT/nvidia-smi.csv" \
  || log "no nvidia-smi"
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" \
  | tee -a "$OUT/steps.log"

log "tests that branch on the GPU"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/node/test_devices.py tests/kernels/test_capability.py 2>&1 | tail -2 \
  | tee -a "$OUT/steps.log"

log "synthesize a $ARCH-shaped checkpoint"
mkdir -p "$WORK/models"
timeout 180 "${AWQD[@]}" synth --arch "$ARCH" --out "$WORK/models/$ARCH" 2>&1 | tail -3 | tee -a "$OUT/steps.log"

log "boot 1 (empty decision cache)"
boot first || exit 1
timeout 30 "${AWQCTL[@]}" describe > "$OUT/describe-first.txt"
timeout 30 "${AWQCTL[@]}" describe --json > "$OUT/describe-first.json"
for kernel in auto awqd_triton_gemv awqd_triton_gemm autoawq_gemm_triton autoawq_gemv_cuda; do
  log "generate with --kernel $kernel"
  echo "{\"kernel\": \"$kernel\"}" >> "$OUT/generate.jsonl"
  timeout 120 "${AWQCTL[@]}" generate --json --model synth --max-new-tokens 32 --kernel "$kernel" \
    "The history of the railway begins" >> "$OUT/generate.jsonl" 2>> "$OUT/steps.log"
  echo "exit code $?" >> "$OUT/steps.log"
done
stop

log "boot 2 (decision cache present)"
boot second || exit 1
timeout 30 "${AWQCTL[@]}" describe --json > "$OUT/describe-second.json"
stop
log "done"
