# issue 18 on a GPU: the prefix cache's correctness and prefill time, in-process
source .gpu/setup.sh
timeout 240 python3 bench/prefix_cache_check.py --out $OUT/pc --selection-budget 60 --cache-dir /tmp/pc-cache > $OUT/pc.log 2>&1; echo "pc rc=$?"
cat $OUT/pc/prefix-cache-check.md; grep -i "error\|Traceback" $OUT/pc.log | head -5
