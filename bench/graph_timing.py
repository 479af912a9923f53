"""What the kernel sweeps share: their --out and --device arguments, a pass captured as one CUDA graph and timed by
replays, and their JSON report. (The time per launch of launches run back to back is
awqd.kernels.measure.per_launch_ms, as tuning ranks tiles.)"""

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def parse_out_and_device(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Path, torch.device]:
    """The sweep's own arguments plus --out (a folder, created) and --device (the GPU where there is one)."""
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return args, out, torch.device(args.device)


def capture(one_pass: Callable[[], Any]) -> tuple[torch.cuda.CUDAGraph, Any]:
    """one_pass run once eagerly on a side stream (as torch.cuda.graph asks), then captured. Returns the graph and
    what the captured pass returned: the tensors each replay rewrites."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        one_pass()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = one_pass()
    return graph, outputs


def replay_ms(graph: torch.cuda.CUDAGraph, replays: int) -> list[float]:
    """Milliseconds of each of `replays` replays, timed with CUDA events."""
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def emit(report: dict, out: str | None) -> None:
    """The report as JSON on stdout, and in the file `out` too when given."""
    text = json.dumps(report, indent=1)
    print(text)
    if out:
        with open(out, "w") as file:
            file.write(text + "\n")
