#!/bin/bash
# CPU mechanism check (no GPU): the engine loop's lag at 256 relayed streams, before (8bb1240) and after (push),
# alternating so that drift on the shared cores falls on both. BEFORE is a `git worktree` of 8bb1240.
set -eu
BEFORE=${BEFORE:-/tmp/before8bb}
OUT=$(dirname "$0")
for round in 1 2; do
  for run in before after; do
    root=$([ $run = before ] && echo "$BEFORE" || echo .)
    python3 bench/concurrency_check.py --code-root "$root" --work /tmp/wcpu --out "$OUT/$run-$round" --dry-run \
      --levels 1,256,256,256,256 --hold 0 --client-processes 1 \
      -- --frontend-processes 1 --max-concurrent-streams 1024 --max-queued-requests 1024
  done
done
for run in before after; do
  python3 bench/bridge_cost.py --code-root "$([ $run = before ] && echo "$BEFORE" || echo .)" \
    --out "$OUT/bridge-cost-$run.json"
done
