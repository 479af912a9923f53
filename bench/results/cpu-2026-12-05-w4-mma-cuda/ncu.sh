# The profile call: bash bench/results/cpu-2026-12-05-w4-mma-cuda/ncu.sh "NAME SPLITS TILES ROWS N K" ... (carry .whl and the cubin)
[ -d /tmp/site/transformers ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
HERE=bench/results/cpu-2026-12-05-w4-mma-cuda
export PYTHONPATH=$PWD/$HERE:/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader >> $OUT/host-ncu.txt
for spec in "$@"; do
  set -- $spec
  ncu --clock-control none -k regex:w4mma --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
    --section LaunchStats --section SchedulerStats \
    --metrics 'dram__bytes_read.sum,lts__t_bytes.sum,smsp__inst_executed_pipe_tensor.sum,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
    python3 $HERE/ncu_w4_mma.py $spec > $OUT/ncu-$1-s$2-t$3-$4-$5x$6.txt 2>&1
  echo "== $spec"
  grep -E "Duration|DRAM Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Stall|Issued Warp|No Eligible|dram__bytes|Waves|stalled" $OUT/ncu-$1-s$2-t$3-$4-$5x$6.txt | grep -v " 0$" | head -40
done
