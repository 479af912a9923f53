# The kernel report with every peer on b5a4c05 (bench/results moved out of the tree for the 64 MiB carry limit).
# carry: [".peers", ".gpu/g3.sh"]; .peers holds the base wheels and fbgemm-gpu-genai, gemlite and autoawq (GPU-MACHINE.md).
B="transformers tokenizers huggingface_hub structlog prometheus_client protobuf"
base=$(for n in $B; do ls .peers/${n}-*.whl; done)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $base || exit
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/peers-site .peers/*.whl || exit
{ nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader; python3 -c "import torch,triton;print('torch',torch.__version__,'triton',triton.__version__)"; } > $OUT/host.txt; cat $OUT/host.txt
export PYTHONUNBUFFERED=1 COLUMNS=200; mkdir -p $OUT/r; start=$(date +%s)
PYTHONPATH=/tmp/peers-site:$PWD:$PWD/clients/python/src timeout 330 python3 bench/kernel_peers.py --out $OUT/r/peers --seed-gemlite-config h100 --selection-budget 300 --cache-dir /tmp/peers-cache > $OUT/r/peers.log 2>&1
echo "peers rc=$? in $(( $(date +%s) - start )) s"
sed -n '/^| tokens/,/^$/p' $OUT/r/peers/kernel-peers.md | head -14 | cut -c1-400
gzip $OUT/r/*.log; cd $OUT && tar czf r.tgz r && rm -rf r
