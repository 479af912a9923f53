# A lone 1024-token prompt past the prefill buckets after an 896-token hit: its rest's CUDA graph (new) against its
# eager rest and its eager whole prompt, with correctness; then through the daemon (new code), one miss, then hits.
source .gpu/setup.sh
timeout 230 python3 bench/prefix_cache_check.py --out $OUT/pc --prompt-tokens 1024 --cached-tokens 896 --prompts 4 \
  --selection-budget 20 --cache-dir /tmp/pc-cache > $OUT/pc.log 2>&1; echo "pc rc=$?"
cat $OUT/pc/prefix-cache-check.md; grep -i "Traceback" -A12 $OUT/pc.log | head -40
for tree in after; do
  root=$PWD; [ $tree = before ] && root=$PWD/.before
  timeout 280 python3 bench/concurrency_check.py --code-root $root --work /tmp/w --out $OUT/hit-$tree --levels 1,1,1 --hold 0 \
    --prompt-tokens 1024 --shared-prefix-tokens 896 --new-tokens 16 -- --selection-budget 40 > $OUT/hit-$tree.log 2>&1; echo "$tree rc=$?"
  grep "^| [0-9]" $OUT/hit-$tree/grpc-concurrency.md | cut -d'|' -f2-7,13
  zcat -f $OUT/hit-$tree/daemon.log | grep -o '"prompt_tokens": 1024.*"ttft_ms": [0-9.]*' | grep -o 'ttft_ms": [0-9.]*' | tr '\n' ' '; echo
  zcat -f $OUT/hit-$tree/daemon.log | grep '"model_warmed_up"' | cut -c1-900
  zcat -f $OUT/hit-$tree/daemon.log | grep -c Traceback; zcat -f $OUT/hit-$tree/daemon.log | grep -i -B2 -A10 Traceback | head -40; gzip $OUT/hit-$tree/daemon.log
  tail -5 $OUT/hit-$tree.log
done
