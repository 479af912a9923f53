# Call 1: engine check on HEAD 7f6391c (.gpu/base), then the GEMV per tile, HEAD vs the working tree, alternately.
source .gpu/setup.sh
t0=$(date +%s); mkdir -p $OUT/r
gv() { root=$1; tag=$2
  PYTHONPATH=/tmp/site:$root:$PWD/clients/python/src timeout 130 python3 $root/bench/gemv_check.py --out $OUT/r/$tag > $OUT/r/$tag.log 2>&1
  echo "$tag rc=$? at $(( $(date +%s) - t0 )) s"; grep "tuned\|Correctness\|FAILED\|16x512\|fp16 cuBLAS" $OUT/r/$tag/gemv-check.md | head -8; }
PYTHONPATH=/tmp/site:$PWD/.gpu/base:$PWD/clients/python/src timeout 270 python3 .gpu/base/bench/engine_check.py --out $OUT/r/engine-base --selection-budget 100 --cache-dir /tmp/cache-base > $OUT/r/engine-base.log 2>&1
echo "engine base rc=$? at $(( $(date +%s) - t0 )) s"
grep -h "engine, auto\|^| 1 |\|^| 32 |\|decode step\|CUDA-graph decode" $OUT/r/engine-base/engine-check.md | cut -c1-220
gv $PWD/.gpu/base gemv-base-1; gv $PWD gemv-new-1
if [ $(( $(date +%s) - t0 )) -lt 470 ]; then gv $PWD/.gpu/base gemv-base-2; gv $PWD gemv-new-2; fi
gzip $OUT/r/*.log; cd $OUT && tar czf r.tgz r && rm -rf r
