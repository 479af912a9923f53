# Call 4: Nsight Compute on the GEMV at 1 and 2 tokens, HEAD 7f6391c (.gpu/base) then 8cfe81e (the tree).
source .gpu/setup.sh
t0=$(date +%s); mkdir -p $OUT/r
for v in base new; do root=$PWD; [ $v = base ] && root=$PWD/.gpu/base
  PYTHONPATH=/tmp/site:$root:$PWD/clients/python/src timeout 230 python3 $root/bench/ncu_kernels.py --out $OUT/r/ncu-$v --cases awqd_triton_gemv@1,awqd_triton_gemv@2 --tune-s 15 > $OUT/r/ncu-$v.log 2>&1
  echo "ncu $v rc=$? at $(( $(date +%s) - t0 )) s"; tail -2 $OUT/r/ncu-$v.log | cut -c1-200
  sed -n 1,40p $OUT/r/ncu-$v/ncu-kernels.md | cut -c1-260
done
gzip $OUT/r/*.log; cd $OUT && tar czf r.tgz r && rm -rf r
