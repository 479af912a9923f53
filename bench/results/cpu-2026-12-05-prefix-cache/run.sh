#!/bin/bash
# CPU mechanism check (no GPU) of the prefix cache through gRPC: the embedded demo model, 448-token prompts whose
# first 384 ids are the same in every stream (24 whole blocks, as a system prompt would be), 16 new tokens, levels
# 1, 8 and 32, each after an untimed warm-up round. One boot per variant, alternating, on one WORK; then the cached
# boot again with one frontend process, so the usage comes through the relay.
set -eu
OUT=$(dirname "$0")
python3 bench/concurrency_check.py --code-root . --work /tmp/pc/work --out "$OUT" --dry-run \
  --levels 1,8,32 --hold 0 --prompt-tokens 448 --shared-prefix-tokens 384 --new-tokens 16 --client-processes 1 \
  --variant cached="" --variant uncached="--no-prefix-caching" \
  --variant cached-2="" --variant uncached-2="--no-prefix-caching" \
  --variant cached-relayed="--frontend-processes 1"
