# issue 18: HEAD's defaults (push relay, prefix cache) then 8bb1240 (pulled relay), 1/256/256 streams, one host
source .gpu/setup.sh
for tree in head before; do
  root=$PWD; [ $tree = before ] && root=$PWD/.before
  limit=280; [ $tree = before ] && limit=250
  timeout $limit python3 bench/concurrency_check.py --code-root $root --work /tmp/w --out $OUT/cc-$tree --levels 1,256,256 --hold 0 -- --selection-budget 60 > $OUT/cc-$tree.log 2>&1; echo "$tree rc=$?"
  grep "^| " $OUT/cc-$tree/grpc-concurrency.md; grep -v "^|" $OUT/cc-$tree.log | tail -n 3
  grep -c Traceback $OUT/cc-$tree/daemon.log; gzip $OUT/cc-$tree/daemon.log
done
