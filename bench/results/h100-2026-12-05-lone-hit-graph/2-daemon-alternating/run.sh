# Through the daemon, alternating on one host: 15341a9 (a lone hit past the prefill buckets runs eagerly) then the
# working tree (its rest replays a CUDA graph). Lone 1024-token prompts sharing 896 ids: one miss, then hits.
source .gpu/setup.sh
for tree in before after; do
  root=$PWD; [ $tree = before ] && root=$PWD/.before
  timeout 280 python3 bench/concurrency_check.py --code-root $root --work /tmp/w --out $OUT/hit-$tree --levels 1,1,1 --hold 0 \
    --prompt-tokens 1024 --shared-prefix-tokens 896 --new-tokens 16 -- --selection-budget 40 > $OUT/hit-$tree.log 2>&1; echo "$tree rc=$?"
  grep "^| [0-9]" $OUT/hit-$tree/grpc-concurrency.md | cut -d'|' -f2-7,13
  zcat -f $OUT/hit-$tree/daemon.log | grep -o '"prompt_tokens": 1024.*"ttft_ms": [0-9.]*' | grep -o 'ttft_ms": [0-9.]*' | tr '\n' ' '; echo
  zcat -f $OUT/hit-$tree/daemon.log | grep '"model_warmed_up"' | cut -c1-900
  zcat -f $OUT/hit-$tree/daemon.log | grep -c Traceback; zcat -f $OUT/hit-$tree/daemon.log | grep -i -B2 -A10 Traceback | head -40; gzip $OUT/hit-$tree/daemon.log
  tail -5 $OUT/hit-$tree.log
done
