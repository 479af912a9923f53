# deferred norm (final kernel), second round on the same host: the working tree first, then HEAD (.before),
# each on a fresh decision cache (Triton's compile cache warm from the first round)
source .gpu/setup.sh
mkdir -p $OUT/r
for tree in after before; do
  root=$PWD; [ $tree = before ] && root=$PWD/.before; limit=230; [ $tree = after ] && limit=255
  (cd $root && PYTHONPATH=/tmp/site:$root:$root/clients/python/src timeout $limit python3 bench/engine_check.py --out $OUT/r/engine-$tree --selection-budget 150 --cache-dir /tmp/cache2-$tree > $OUT/r/engine-$tree.log 2>&1; echo "$tree rc=$?")
  grep -h "engine, auto\|^| 1 |\|^| 8 |\|^| 32 |\|decode step\|Layer kernels\|CUDA-graph decode\|position 2048" $OUT/r/engine-$tree/engine-check.md | cut -c1-220
  grep -h "add_rms_norm_kernel\|gemv_kernel\|Self CUDA time total" $OUT/r/engine-$tree/decode-profile.txt | cut -c1-60,140-220
  cp /tmp/cache2-$tree/decisions-*.json $OUT/r/engine-$tree/ 2>/dev/null
  grep "^engine_check" $OUT/r/engine-$tree.log | tail -n 1
done
cd $OUT && tar czf r.tgz r && rm -rf r
