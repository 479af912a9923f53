# deferred norm: layer micro-benchmark (residual loads in the epilogue / before the loop), then engine check back to
# back on one host: the working tree (deferred norm) then HEAD (.before, norm kernel)
source .gpu/setup.sh
mkdir -p $OUT/r
for tree in after variant; do
  root=$PWD; [ $tree = variant ] && root=$PWD/.variant
  (cd $root/bench && PYTHONPATH=/tmp/site:$root timeout 70 python3 deferred_norm.py --out $OUT/r/deferred-norm-$tree > $OUT/r/deferred-norm-$tree.log 2>&1; echo "$tree rc=$?")
  tail -n 4 $OUT/r/deferred-norm-$tree.log
done
for tree in after before; do
  root=$PWD; [ $tree = before ] && root=$PWD/.before
  (cd $root && PYTHONPATH=/tmp/site:$root:$root/clients/python/src timeout 240 python3 bench/engine_check.py --out $OUT/r/engine-$tree --selection-budget 150 --cache-dir /tmp/cache-$tree > $OUT/r/engine-$tree.log 2>&1; echo "$tree rc=$?")
  grep -h "engine, auto\|^| 1 |\|^| 8 |\|^| 32 |\|decode step\|Layer kernels\|CUDA-graph decode\|position 2048" $OUT/r/engine-$tree/engine-check.md | cut -c1-220
  grep -h "add_rms_norm_kernel\|gemv_kernel\|Self CUDA time total" $OUT/r/engine-$tree/decode-profile.txt | cut -c1-60,140-220
  cp /tmp/cache-$tree/decisions-*.json $OUT/r/engine-$tree/ 2>/dev/null
  tail -n 3 $OUT/r/engine-$tree.log | cut -c1-300
done
cd $OUT && tar czf r.tgz r && rm -rf r
