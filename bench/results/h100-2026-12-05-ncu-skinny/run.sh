# Nsight Compute on the skinny kernel at 16, 64 and 128 tokens (the missed buckets), on the working tree.
# carry: [".whl", ".gpu/c7.sh", ".gpu/setup.sh"]; .gpu/setup.sh is ../h100-2026-12-05-dequant-tiles/setup.sh. Code: d5aefc8.
source .gpu/setup.sh
t0=$(date +%s); mkdir -p $OUT/r
timeout 230 python3 bench/ncu_kernels.py --out $OUT/r/ncu-skinny --cases awqd_triton_skinny@16,awqd_triton_skinny@64,awqd_triton_skinny@128 --tune-s 15 > $OUT/r/ncu-skinny.log 2>&1
echo "ncu rc=$? at $(( $(date +%s) - t0 )) s"; tail -2 $OUT/r/ncu-skinny.log | cut -c1-200
sed -n 1,40p $OUT/r/ncu-skinny/ncu-kernels.md | cut -c1-300
gzip $OUT/r/*.log; cd $OUT && tar czf r.tgz r && rm -rf r
