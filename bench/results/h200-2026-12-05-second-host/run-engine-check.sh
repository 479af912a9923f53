# Engine check on b5a4c05 alone, right after the kernel report on the same machine.
# carry: [".whl", ".gpu/c5.sh", ".gpu/setup.sh"]; .gpu/setup.sh is ../h100-2026-12-05-dequant-tiles/setup.sh.
source .gpu/setup.sh
t0=$(date +%s); mkdir -p $OUT/r
for v in new; do root=$PWD; [ $v = base ] && root=$PWD/.gpu/base
  PYTHONPATH=/tmp/site:$root:$PWD/clients/python/src timeout 400 python3 $root/bench/engine_check.py --out $OUT/r/engine-$v --selection-budget 100 --cache-dir /tmp/cache-$v > $OUT/r/engine-$v.log 2>&1
  echo "engine $v rc=$? at $(( $(date +%s) - t0 )) s"; tail -3 $OUT/r/engine-$v.log | cut -c1-200
  grep -h "engine, auto\|^| 1 |\|^| 32 |\|decode step\|CUDA-graph decode" $OUT/r/engine-$v/engine-check.md | cut -c1-220
  cp /tmp/cache-$v/decisions-*.json $OUT/r/engine-$v/ 2>/dev/null
done
gzip $OUT/r/*.log; cd $OUT && tar czf r.tgz r && rm -rf r
