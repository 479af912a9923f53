# issue 18: the prefix cache through gRPC: 1024-token prompts whose first 896 ids are shared, with and without it
source .gpu/setup.sh
timeout 560 python3 bench/concurrency_check.py --code-root . --work /tmp/w --out $OUT/pc --levels 1,32,128 --hold 0 \
  --prompt-tokens 1024 --shared-prefix-tokens 896 --new-tokens 64 \
  --variant cached="" --variant uncached="--no-prefix-caching" --variant cached-2="" --variant uncached-2="--no-prefix-caching" \
  -- --selection-budget 150 > $OUT/pc.log 2>&1; echo "rc=$?"
grep -v "^|" $OUT/pc.log | tail -n 4
cut -d'|' -f2-8,10,11,14,15 $OUT/pc/compare.md
zcat -f $OUT/pc/*/daemon.log | grep -c Traceback
cd $OUT && tar czf pc.tgz pc && rm -rf pc
