# Planned, not run (no device was left): a rest's graph for every lone prompt after a hit, within the prefill
# buckets too (`83c2b7b`). In one process at 384/256 (within the buckets) and 1024/896 (past them); through the
# daemon at 384/256, 15341a9 (the whole prompt's graph) then the code under test, booted alternately on one host.
source .gpu/setup.sh
pc() {
  timeout 170 python3 bench/prefix_cache_check.py --out $OUT/pc-$1 --prompt-tokens $1 --cached-tokens $2 --prompts 4 \
    --selection-budget 20 --cache-dir /tmp/pc-cache > $OUT/pc-$1.log 2>&1; echo "pc $1 rc=$?"
  sed -n '/## Against/,/## Greedy/p' $OUT/pc-$1/prefix-cache-check.md; grep -i "Traceback" -A12 $OUT/pc-$1.log | head -30
}
pc 384 256
for tree in before after; do
  root=$PWD; [ $tree = before ] && root=$PWD/.before
  timeout 150 python3 bench/concurrency_check.py --code-root $root --work /tmp/w --out $OUT/hit-$tree --levels 1,1,1 --hold 0 \
    --prompt-tokens 384 --shared-prefix-tokens 256 --new-tokens 16 -- --selection-budget 30 > $OUT/hit-$tree.log 2>&1; echo "$tree rc=$?"
  zcat -f $OUT/hit-$tree/daemon.log | grep -o '"prompt_tokens": 384.*"ttft_ms": [0-9.]*' | grep -o 'ttft_ms": [0-9.]*' | tr '\n' ' '; echo
  zcat -f $OUT/hit-$tree/daemon.log | grep '"model_warmed_up"' | cut -c1-400
  zcat -f $OUT/hit-$tree/daemon.log | grep -c Traceback; zcat -f $OUT/hit-$tree/daemon.log | grep -i -B2 -A10 Traceback | head -30; gzip $OUT/hit-$tree/daemon.log
  tail -3 $OUT/hit-$tree.log
done
pc 1024 896
