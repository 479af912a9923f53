# Call 2: the engine check on 87c14da (before the TMA scale-zero change; .gpu/base) and on HEAD, back to back.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONUNBUFFERED=1 COLUMNS=200
nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader > $OUT/host.txt; cat $OUT/host.txt
t0=$(date +%s); mkdir -p $OUT/r
for v in base new; do root=$PWD; [ $v = base ] && root=$PWD/.gpu/base
  PYTHONPATH=/tmp/site:$root:$root/clients/python/src timeout 275 python3 $root/bench/engine_check.py --out $OUT/r/engine-$v --selection-budget 60 --cache-dir /tmp/cache-$v > $OUT/r/engine-$v.log 2>&1
  echo "engine $v rc=$? at $(( $(date +%s) - t0 )) s"; tail -2 $OUT/r/engine-$v.log | cut -c1-200
  grep -h "engine, auto\|^| 1 |\|^| 32 |\|decode step\|CUDA-graph decode\|TTFT" $OUT/r/engine-$v/engine-check.md | cut -c1-220
  cp /tmp/cache-$v/decisions-*.json $OUT/r/engine-$v/ 2>/dev/null
done
gzip $OUT/r/*.log
