# Nsight Compute with L2 and SM throughput: the GEMV at 1 token and the skinny kernel at 16, 64 and 128 (asked for nvidia-h200; got an H100).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; ncu --version | tail -1; } > $OUT/host.txt
cat $OUT/host.txt; t0=$(date +%s)
timeout 500 python3 bench/ncu_kernels.py --out $OUT --cases awqd_triton_gemv@1,awqd_triton_skinny@16,awqd_triton_skinny@64,awqd_triton_skinny@128 --tune-s 15 > $OUT/ncu.log 2>&1
echo "ncu rc=$? at $(( $(date +%s) - t0 )) s"; tail -2 $OUT/ncu.log | cut -c1-300
cut -c1-400 $OUT/ncu-kernels.md
