# Call 2 (H100 GPU-ae240866), 0b0695a plus bench/dequant_check.py as in call-2 (ten tiles; the layer at 256, 512 and
# 2048 tokens, each linear on its fastest tile), then chunked.py. carry: [".whl", ".gpu/c2.sh", ".gpu/chunked.py", ".gpu/setup.sh"]
source .gpu/setup.sh
t0=$(date +%s); mkdir -p $OUT/r
timeout 240 python3 bench/dequant_check.py --out $OUT/r/dequant-tiles > $OUT/r/dequant-tiles.log 2>&1
echo "dequant-tiles rc=$? at $(( $(date +%s) - t0 )) s"; tail -30 $OUT/r/dequant-tiles.log | grep -v "^$"
timeout 240 python3 .gpu/chunked.py 8 1024 2 > $OUT/r/chunked.log 2>&1
echo "chunked rc=$? at $(( $(date +%s) - t0 )) s"; cat $OUT/r/chunked.log | tail -8
cp .gpu/chunked.py $OUT/r/
gzip $OUT/r/*.log; cd $OUT && tar czf r.tgz r && rm -rf r
