# Sourced first by every device run: the carried wheels into /tmp/site, awqd and its client on PYTHONPATH.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD:$PWD/clients/python/src PYTHONUNBUFFERED=1 COLUMNS=200
{ nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader; echo "cpus $(nproc)"; python3 -c "import torch,triton,grpc;print('torch',torch.__version__,'triton',triton.__version__,'grpc',grpc.__version__)"; } > $OUT/host.txt 2>&1
cat $OUT/host.txt
