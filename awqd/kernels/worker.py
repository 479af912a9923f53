"""The isolated side of kernel selection: `python -m awqd.kernels.worker RESULT_FD`, started by
awqd/kernels/isolation.py. Reads one JSON command per line on stdin, answers one JSON line each on RESULT_FD,
and before every risky step writes a {"at": ...} line saying where it is, so a crash can be placed.

Every candidate kernel runs here, never in the daemon: a kernel that aborts, hangs or poisons the CUDA context
takes down only this process. After a failed step on CUDA it checks that the context still works, and exits
when it does not, so the parent starts a fresh one for the remaining candidates.
"""

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from awqd.kernels import plugins, registry
from awqd.kernels.measure import (
    CORRECTNESS_INPUTS,
    PreparedLayers,
    check_correctness,
    check_graph_replay,
    default_repetitions,
    measure_copy_bandwidth_gbps,
    prepare_layers,
    random_layer_weights,
    rotation_copies,
    time_candidate,
)


class Worker:
    def __init__(self, out: Callable[[dict[str, Any]], None]):
        self.out = out
        self.device = torch.device("cpu")
        self.weights: dict[tuple, list] = {}  # the shared timing weights, per (shapes, group size)
        self.layers: dict[tuple, PreparedLayers] = {}  # per (candidate, shapes, group size)

    def at(self, where: str) -> None:
        self.out({"at": where})

    def hello(self, device: str, plugin_specs: list[str]) -> dict[str, Any]:
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.cuda.init()
        loaded = plugins.activate(plugin_specs, registry.CANDIDATES)
        return {"plugins": {p.spec: p.error for p in loaded}}

    def bandwidth(self) -> dict[str, Any]:
        return {"gbps": measure_copy_bandwidth_gbps(self.device)}

    def check(self, name: str, shapes: list, group_size: int, rows: int = 0) -> dict[str, Any]:
        """The eager check on CORRECTNESS_INPUTS, or with `rows` on that many rows alone."""
        candidate = registry.build(name)
        inputs = ((rows,),) if rows else CORRECTNESS_INPUTS
        return asdict(check_correctness(candidate, self.device, to_shapes(shapes), group_size, inputs, self.at))

    def graph_check(self, name: str, shapes: list, group_size: int, bucket: int) -> dict[str, Any]:
        candidate = registry.build(name)
        return asdict(check_graph_replay(candidate, self.device, to_shapes(shapes), group_size, bucket, self.at))

    def tune(self, name: str, shapes: list, buckets: list[int], group_size: int, seconds: float) -> dict[str, Any]:
        self.at(f"tuning {name}")
        tuned = registry.build(name).tune(
            to_shapes(shapes), buckets, group_size, self.device, time.perf_counter() + seconds
        )
        return {"table": tuned.table, "notes": tuned.notes}

    def install(self, tuning: dict[str, Any]) -> dict[str, Any]:
        for name, stored in tuning.items():
            registry.build(name).install_tuning(stored, self.device)
        return {}

    def time(self, name: str, shapes: list, group_size: int, bucket: int, cuda_graph: bool) -> dict[str, Any]:
        layer_shapes = to_shapes(shapes)
        key = (name, tuple(layer_shapes), group_size)
        if key not in self.layers:
            weights_key = (tuple(layer_shapes), group_size)
            if weights_key not in self.weights:
                copies = rotation_copies(layer_shapes, self.device)
                self.weights[weights_key] = random_layer_weights(layer_shapes, group_size, self.device, copies)
            candidate = registry.build(name)
            packed = []
            for number, copy in enumerate(self.weights[weights_key], 1):
                self.at(f"packing timing weights copy {number} for {name}")
                packed.append(prepare_layers(candidate, [copy], self.device).packed[0])
            self.layers[key] = PreparedLayers(candidate, tuple(layer_shapes), packed)
        warmup, iterations = default_repetitions(self.device)
        where = f"timing at {bucket} tokens"
        self.at(where)
        timing = time_candidate(
            self.layers[key],
            self.device,
            bucket,
            warmup,
            iterations,
            cuda_graph,
            lambda step: self.at(f"{where}, {step}"),
        )
        return asdict(timing)

    def release(self, name: str) -> dict[str, Any]:
        """Drops a candidate's packed timing weights (it is rejected, or timing is over)."""
        for key in [key for key in self.layers if key[0] == name]:
            del self.layers[key]
        return {}

    def context_works(self) -> bool:
        if self.device.type != "cuda":
            return True
        try:
            torch.ones(1, device=self.device).add_(1).item()
            torch.cuda.synchronize(self.device)
            return True
        except Exception:
            return False


def to_shapes(shapes: list) -> list[tuple[int, int]]:
    return [(int(out_features), int(in_features)) for out_features, in_features in shapes]


def main() -> int:
    result_fd = int(sys.argv[1])
    result = os.fdopen(result_fd, "w", buffering=1)

    def out(record: dict[str, Any]) -> None:
        result.write(json.dumps(record) + "\n")
        result.flush()

    worker = Worker(out)
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        try:
            reply = {"ok": True, **getattr(worker, op)(**command)}
        except Exception as error:  # the step failed; its error text is the candidate's rejection reason
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        failed = not reply["ok"] or reply.get("passed") is False
        if failed and not worker.context_works():
            out({**reply, "poisoned": True})
            return 3
        out(reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
