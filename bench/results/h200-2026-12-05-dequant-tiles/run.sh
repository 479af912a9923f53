# Call 3 (H200 GPU-1734e517): the tree of the commit that added this folder (DequantConfig default 8 x 1024, 4 warps).
# carry: [".whl", ".gpu/c3.sh", ".gpu/setup.sh"]
# .gpu/setup.sh is ../h100-2026-12-05-dequant-tiles/setup.sh.
source .gpu/setup.sh
t0=$(date +%s); mkdir -p $OUT/r
timeout 300 python3 bench/dequant_check.py --out $OUT/r/dequant-check > $OUT/r/dequant-check.log 2>&1
echo "dequant-check rc=$? at $(( $(date +%s) - t0 )) s"; tail -28 $OUT/r/dequant-check.log | grep -v "^$"
gzip $OUT/r/*.log; cd $OUT && tar czf r.tgz r && rm -rf r
