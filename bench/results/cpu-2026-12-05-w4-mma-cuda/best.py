"""The fastest w4_mma tile and split on gate_up (22016 x 4096) at each timed bucket, as ncu.sh's arguments."""

import json
import sys
from pathlib import Path

results = json.loads(Path(sys.argv[1]).read_text())
for rows, linears in results["linear_us"].items():
    us = linears.get("22016x4096", {})
    ours = {label: value for label, value in us.items() if label.startswith("w4mma")}
    if ours:
        name, splits, tiles = min(ours, key=ours.get).split()
        print(f"{name} {splits[1:]} {tiles[1:]} {rows} 22016 4096")
