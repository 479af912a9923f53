# deferred norm (final kernel): engine check back to back on one host, HEAD first (.before, norm kernel), then the
# working tree (deferred norm)
source .gpu/setup.sh
mkdir -p $OUT/r
for tree in before after; do
  root=$PWD; [ $tree = before ] && root=$PWD/.before; limit=280; [ $tree = after ] && limit=230
  (cd $root && PYTHONPATH=/tmp/site:$root:$root/clients/python/src timeout $limit python3 bench/engine_check.py --out $OUT/r/engine-$tree --selection-budget 150 --cache-dir /tmp/cache-$tree > $OUT/r/engine-$tree.log 2>&1; echo "$tree rc=$?")
  grep -h "engine, auto\|^| 1 |\|^| 8 |\|^| 32 |\|decode step\|Layer kernels\|CUDA-graph decode\|position 2048" $OUT/r/engine-$tree/engine-check.md | cut -c1-220
  grep -h "add_rms_norm_kernel\|gemv_kernel\|Self CUDA time total" $OUT/r/engine-$tree/decode-profile.txt | cut -c1-60,140-220
  cp /tmp/cache-$tree/decisions-*.json $OUT/r/engine-$tree/ 2>/dev/null
  grep "^engine_check" $OUT/r/engine-$tree.log | tail -n 1
done
cd $OUT && tar czf r.tgz r && rm -rf r
