# the first prefix-cache hit's TTFT: 3ef48b2 (no warm-up of the hit path) then the working tree (warm-up runs one),
# lone 1024-token prompts sharing 896 ids, one miss then five hits per boot
source .gpu/setup.sh
for tree in before after; do
  root=$PWD; [ $tree = before ] && root=$PWD/.before
  timeout 200 python3 bench/concurrency_check.py --code-root $root --work /tmp/w --out $OUT/hit-$tree --levels 1,1,1 --hold 0 \
    --prompt-tokens 1024 --shared-prefix-tokens 896 --new-tokens 16 -- --selection-budget 40 > $OUT/hit-$tree.log 2>&1; echo "$tree rc=$?"
  grep "^| [0-9]" $OUT/hit-$tree/grpc-concurrency.md | cut -d'|' -f2-7,13
  zcat -f $OUT/hit-$tree/daemon.log | grep -o '"prompt_tokens": 1024.*"ttft_ms": [0-9.]*' | grep -o 'ttft_ms": [0-9.]*' | tr '\n' ' '; echo
  zcat -f $OUT/hit-$tree/daemon.log | grep '"model_warmed_up"' | grep -o '"slowest_steps.*' | cut -c1-300
  zcat -f $OUT/hit-$tree/daemon.log | grep -c Traceback; gzip $OUT/hit-$tree/daemon.log
done
cd $OUT && tar czf hit.tgz hit-* && rm -rf hit-*
