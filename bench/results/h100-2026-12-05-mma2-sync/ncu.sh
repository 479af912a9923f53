# The profile call: bash bench/results/h100-2026-12-05-mma2-sync/ncu.sh (carry .whl)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
HERE=bench/results/h100-2026-12-05-mma2-sync
export PYTHONPATH=$PWD/$HERE:/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader > $OUT/host.txt
for rows in 16 64; do
  ncu --clock-control none -k regex:w4_mma2 --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
    --section LaunchStats --section SchedulerStats \
    --metrics dram__bytes_read.sum,lts__t_bytes.sum,lts__t_requests.sum,lts__t_sectors.sum \
    python3 $HERE/ncu_mma2.py $rows 4 > $OUT/ncu-$rows.txt 2>&1
  grep -E "Duration|DRAM Throughput|Memory Throughput|L2 Cache Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Stall|Issued Warp|No Eligible|dram__bytes|lts__t|Block Size|Grid Size|Waves" $OUT/ncu-$rows.txt | head -40
done
