# issue 18: 8bb1240 (pulled relay) and HEAD (push relay, prefix cache) alternating on one host and one decision cache:
# the first boot measures the kernels with a full budget, the later ones re-validate the same decisions
source .gpu/setup.sh
n=0
for tree in before head before head; do
  n=$((n+1)); root=$PWD; [ $tree = before ] && root=$PWD/.before
  limit=120; [ $n = 1 ] && limit=230
  timeout $limit python3 bench/concurrency_check.py --code-root $root --work /tmp/w --out $OUT/cc-$n-$tree --levels 1,256 --hold 0 -- --selection-budget 150 > $OUT/cc-$n-$tree.log 2>&1; echo "$n $tree rc=$?"
  grep "^| [0-9]" $OUT/cc-$n-$tree/grpc-concurrency.md | cut -d'|' -f2-10,13
  zcat -f $OUT/cc-$n-$tree/daemon.log | grep '"kernels_selected"' | cut -c1-120
  grep -c Traceback $OUT/cc-$n-$tree/daemon.log; gzip $OUT/cc-$n-$tree/daemon.log
done
cd $OUT && tar czf cc.tgz cc-* && rm -rf cc-*
