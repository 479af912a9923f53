# Call 1: the kernel report with every peer, then Nsight Compute at 512 tokens (skinny, fbgemm) and at 16 (skinny).
B="transformers tokenizers huggingface_hub structlog prometheus_client protobuf"
base=$(for n in $B; do ls .peers/${n}-*.whl; done)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $base || exit
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/peers-site .peers/*.whl || exit
{ nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader; echo "cpus $(nproc)"; python3 -c "import torch,triton;print('torch',torch.__version__,'triton',triton.__version__)"; echo "code $(cat .gpu/rev)"; } > $OUT/host.txt; cat $OUT/host.txt
export PYTHONUNBUFFERED=1 COLUMNS=200 PYTHONPATH=/tmp/peers-site:$PWD:$PWD/clients/python/src; mkdir -p $OUT/r; t0=$(date +%s)
timeout 330 python3 bench/kernel_peers.py --out $OUT/r/kernel-report --seed-gemlite-config h100 --selection-budget 300 --cache-dir /tmp/peers-cache > $OUT/r/kernel-report.log 2>&1
echo "report rc=$? at $(( $(date +%s) - t0 )) s"
sed -n '/^| tokens/,/^$/p' $OUT/r/kernel-report/kernel-peers.md | head -14 | cut -c1-300
timeout $(( 570 - ($(date +%s) - t0) )) python3 bench/ncu_kernels.py --out $OUT/r/ncu --cases awqd_triton_skinny@512,fbgemm_bf16i4_shuffled@512,awqd_triton_skinny@16 --tune-s 30 > $OUT/r/ncu.log 2>&1
echo "ncu rc=$? at $(( $(date +%s) - t0 )) s"; tail -3 $OUT/r/ncu.log | cut -c1-300
sed -n 5,40p $OUT/r/ncu/ncu-kernels.md | cut -c1-330
gzip $OUT/r/*.log
