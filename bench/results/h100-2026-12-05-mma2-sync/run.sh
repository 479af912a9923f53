# On the GPU machine, from the repository root, with the base wheels carried in .whl (../../../../shared/reference/GPU-MACHINE.md):
#   bash bench/results/h100-2026-12-05-mma2-sync/run.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
HERE=bench/results/h100-2026-12-05-mma2-sync
export PYTHONPATH=$PWD/$HERE:/tmp/site:$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $OUT/host.txt
cat $OUT/host.txt
timeout 560 python3 $HERE/mma2_check.py $OUT 2>&1 | tee $OUT/log.txt | grep -v "^FAIL" | tail -30
grep -c "^FAIL" $OUT/log.txt; grep "^FAIL" $OUT/log.txt | head -5
