# Call 3: the kernel report with every peer on HEAD; then, in the time left, awqd's own candidates alone on 87c14da
# (before the TMA scale-zero change) and on HEAD, same arguments, back to back.
B="transformers tokenizers huggingface_hub structlog prometheus_client protobuf"
base=$(for n in $B; do ls .peers/${n}-*.whl; done)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $base || exit
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/peers-site .peers/*.whl || exit
{ nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader; echo "cpus $(nproc)"; python3 -c "import torch,triton;print('torch',torch.__version__,'triton',triton.__version__)"; echo "code $(cat .gpu/rev)"; } > $OUT/host.txt; cat $OUT/host.txt
export PYTHONUNBUFFERED=1 COLUMNS=200; mkdir -p $OUT/r; t0=$(date +%s)
PYTHONPATH=/tmp/peers-site:$PWD:$PWD/clients/python/src timeout 300 python3 bench/kernel_peers.py --out $OUT/r/kernel-report --seed-gemlite-config h100 --selection-budget 300 --cache-dir /tmp/peers-cache > $OUT/r/kernel-report.log 2>&1
echo "report rc=$? at $(( $(date +%s) - t0 )) s"
sed -n '/^| tokens/,/^$/p' $OUT/r/kernel-report/kernel-peers.md | head -14 | cut -c1-300
for v in base new; do root=$PWD; [ $v = base ] && root=$PWD/.gpu/base
  left=$(( 560 - ($(date +%s) - t0) )); [ $left -lt 60 ] && break
  PYTHONPATH=/tmp/site:$root:$root/clients/python/src timeout $left python3 $root/bench/kernel_peers.py --out $OUT/r/own-$v --buckets 4,16,32,64,128,512 --selection-budget 100 --cache-dir /tmp/own-$v > $OUT/r/own-$v.log 2>&1
  echo "own $v rc=$? at $(( $(date +%s) - t0 )) s"
  sed -n '/^| tokens/,/^$/p' $OUT/r/own-$v/kernel-peers.md | head -9 | cut -c1-300
done
gzip $OUT/r/*.log
