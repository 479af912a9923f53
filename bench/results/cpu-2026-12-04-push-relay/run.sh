#!/bin/bash
# CPU mechanism check (no GPU): the engine loop's cost and lag with relayed streams, before (8bb1240: pulled) and
# after (this checkout: pushed, each call yielding once before its bookkeeping); bridge_cost.py also runs bed4093
# (pushed, without that yield). End-to-end boots alternate, so that drift on the shared cores falls on both.
# BEFORE and NO_YIELD are `git worktree`s of 8bb1240 and bed4093.
set -eu
BEFORE=${BEFORE:-/tmp/before8bb}
NO_YIELD=${NO_YIELD:-/tmp/nosleep}
OUT=$(dirname "$0")
for round in 1 2; do
  for run in before after; do
    root=$([ $run = before ] && echo "$BEFORE" || echo .)
    python3 bench/concurrency_check.py --code-root "$root" --work /tmp/wcpu --out "$OUT/$run-$round" --dry-run \
      --levels 1,256,256,256,256 --hold 0 --client-processes 1 \
      -- --frontend-processes 1 --max-concurrent-streams 1024 --max-queued-requests 1024
    rm "$OUT/$run-$round/daemon.log"
  done
done
for run in before no-yield after; do
  root=$(case $run in before) echo "$BEFORE" ;; no-yield) echo "$NO_YIELD" ;; *) echo . ;; esac)
  python3 bench/bridge_cost.py --code-root "$root" --out "$OUT/bridge-cost-$run.json" 2> /dev/null
done
