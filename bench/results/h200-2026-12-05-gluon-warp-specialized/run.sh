# The device call, from the repo root with the awqd wheels carried in .whl (../../../../shared/reference/GPU-MACHINE.md).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
HERE=bench/results/h200-2026-12-05-gluon-warp-specialized
export PYTHONPATH=$PWD/$HERE:/tmp/site:$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $OUT/host.txt
timeout 560 python3 $HERE/gluon_check.py $OUT 2>&1 | tee $OUT/log.txt | tail -40
