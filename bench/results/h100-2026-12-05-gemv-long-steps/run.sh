# GEMV tiles with longer K steps (2048-4096 columns: 1-2 steps per program on K = 4096) beside the seven of the
# tuning space: one bench/gemv_check.py run on b5a4c05 with long-steps.patch applied.
# carry: [".whl", ".gpu/c6.sh", ".gpu/setup.sh"]; .gpu/setup.sh is ../h100-2026-12-05-dequant-tiles/setup.sh.
source .gpu/setup.sh
t0=$(date +%s); mkdir -p $OUT/r
timeout 240 python3 bench/gemv_check.py --out $OUT/r/gemv-long-steps > $OUT/r/gemv-long-steps.log 2>&1
echo "gemv rc=$? at $(( $(date +%s) - t0 )) s"; sed -n '/^| configuration/,/^Roofline/p' $OUT/r/gemv-long-steps/gemv-check.md; grep -A7 "at 1 token" $OUT/r/gemv-long-steps/gemv-check.md; grep "Correctness" $OUT/r/gemv-long-steps/gemv-check.md
gzip $OUT/r/*.log; cd $OUT && tar czf r.tgz r && rm -rf r
