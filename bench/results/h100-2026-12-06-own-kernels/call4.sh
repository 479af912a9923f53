# Call 4: awqd's own candidates alone, 87c14da (before the TMA scale-zero change; .gpu/base) and HEAD alternately, twice.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONUNBUFFERED=1 COLUMNS=200
nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader > $OUT/host.txt; cat $OUT/host.txt
t0=$(date +%s); mkdir -p $OUT/r
for run in base1 new1 base2 new2; do root=$PWD; case $run in base*) root=$PWD/.gpu/base;; esac
  PYTHONPATH=/tmp/site:$root:$root/clients/python/src timeout 62 python3 $root/bench/kernel_peers.py --out $OUT/r/$run --buckets 16,32,128 --selection-budget 30 --cache-dir /tmp/own-$run > $OUT/r/$run.log 2>&1
  echo "$run rc=$? at $(( $(date +%s) - t0 )) s"
  python3 -c "import json,sys;d=json.load(open(sys.argv[1]));s=d['selection']['timings'];t=d['timings']['awqd_triton_skinny'];print({b:(s[b]['awqd_triton_skinny'],t[b]['median_ms']) for b in t})" $OUT/r/$run/kernel-peers.json
done
gzip $OUT/r/*.log; cd $OUT && tar czf r.tgz r && rm -rf r
