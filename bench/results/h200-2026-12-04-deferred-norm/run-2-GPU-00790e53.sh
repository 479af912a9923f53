# deferred norm, per linear and per layer, three consumer variants: A (sums loaded before the loop, added after),
# C (loaded and added before the loop), V3 (loaded and added after the loop)
source .gpu/setup.sh
mkdir -p $OUT/r
for tree in A C V3 A2; do
  root=$PWD; [ $tree = C ] && root=$PWD/.variant; [ $tree = V3 ] && root=$PWD/.variant3
  (cd $root/bench && PYTHONPATH=/tmp/site:$root timeout 100 python3 deferred_norm.py --out $OUT/r/deferred-norm-$tree > $OUT/r/deferred-norm-$tree.log 2>&1; echo "$tree rc=$?")
  tail -n 18 $OUT/r/deferred-norm-$tree/deferred-norm.md
done
cd $OUT && tar czf r.tgz r && rm -rf r
