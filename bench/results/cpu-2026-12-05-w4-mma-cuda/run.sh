# On the GPU machine, from the repository root, with the base wheels carried in .whl and the cubin built here
# (python3 w4_mma.py build; ../../../../shared/reference/GPU-MACHINE.md):
#   bash bench/results/cpu-2026-12-05-w4-mma-cuda/run.sh [buckets...]
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
HERE=bench/results/cpu-2026-12-05-w4-mma-cuda
export PYTHONPATH=$PWD/$HERE:/tmp/site:$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $OUT/host.txt
cat $OUT/host.txt
timeout ${LIMIT:-330} python3 $HERE/w4_mma_check.py $OUT "$@" 2>&1 | tee $OUT/log.txt | grep -v "^FAIL" | tail -40
grep -c "^FAIL" $OUT/log.txt; grep "^FAIL" $OUT/log.txt | head -20
# With NCU=1, profile the fastest tile on gate_up at the first two buckets timed.
if [ "$NCU" = 1 ]; then
  python3 $HERE/best.py $OUT/w4-mma-check.json | head -2 | while read -r spec; do timeout 45 bash $HERE/ncu.sh "$spec"; done
fi
