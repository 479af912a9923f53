"""The engine's forward steps: prefill eagerly, decode as a CUDA graph per (kernel pin, batch bucket).

Decode rows are compact: row i is whichever sequence the scheduler put in place i, and its token, position and
block table (awqd.engine.kv_cache) are copied into static buffers of max_rows rows before each step. Decode pads
the batch to a bucket (1, 2, 4, ... up to max_rows); the quantized linears pick their kernel by the padded row
count, so a graph captured for a bucket holds the kernel the decision table names for it (or the pinned one: the
pin is part of the graph's key). Padding rows point at the padding block, position 0, which no sequence owns.
Decode attention reads each row's length and blocks from those buffers on the device, so one graph serves a
bucket at every position and block assignment.

A key's graph is captured right after its first step, which runs eagerly (and so compiles the Triton kernels for
that shape); later steps replay it. Warm-up (awqd.engine.warmup) runs that first step for every unpinned bucket
before the model turns ready; a pinned key is captured on its first request. A capture that fails (some kernels
cannot be captured) leaves that key eager, with the reason kept and logged. On the CPU, and with --no-cuda-graphs,
every step is eager: the same code, minus capture.
"""

from dataclasses import dataclass

import structlog
import torch

from awqd.engine.kv_cache import PADDING_BLOCK, KvCache
from awqd.engine.model import DecoderModel
from awqd.quant.linear import KernelRouter

log = structlog.get_logger("awqd.engine")


@dataclass(frozen=True)
class StepKernel:
    bucket: int  # the decision table's bucket for the step's token count
    kernel: str


@dataclass
class CapturedDecode:
    graph: torch.cuda.CUDAGraph
    logits: torch.Tensor  # the graph's output, rewritten by each replay


class StepRunner:
    def __init__(self, model: DecoderModel, cache: KvCache, router: KernelRouter, cuda_graphs: bool, max_rows: int):
        self.model = model
        self.cache = cache
        self.router = router
        self.max_rows = max_rows  # sequences one decode step runs (--max-batch-size)
        self.batch_buckets = (*(b for b in (2**i for i in range(16)) if b < max_rows), max_rows)
        self.cuda_graphs = cuda_graphs and model.device.type == "cuda"
        self.tokens = torch.zeros(max_rows, dtype=torch.int64, device=model.device)
        self.positions = torch.zeros(max_rows, dtype=torch.int64, device=model.device)
        table_shape = (max_rows, cache.plan.max_blocks_per_seq)
        self.tables = torch.full(table_shape, PADDING_BLOCK, dtype=torch.int32, device=model.device)
        self.graphs: dict[tuple[str, int], CapturedDecode] = {}
        self.eager_keys: dict[tuple[str, int], Exception] = {}  # keys whose capture failed, and why
        self.pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None

    def batch_bucket(self, rows: int) -> int:
        return next(bucket for bucket in self.batch_buckets if bucket >= rows)

    def step_kernel(self, tokens: int) -> StepKernel:
        return StepKernel(self.router.bucket_for(tokens), self.router.candidate_for(tokens).name)

    def prefill(self, prompts: list[list[int]], tables: list[list[int]]) -> tuple[torch.Tensor, StepKernel]:
        """prompts[i] into the blocks tables[i] in one forward pass: logits [len(prompts), vocab] of each prompt's
        last position, and the kernel that ran (picked by the prompts' total token count)."""
        lengths = [len(prompt) for prompt in prompts]
        ids = torch.tensor([token for prompt in prompts for token in prompt], dtype=torch.int64)
        ids = ids.to(self.model.device, non_blocking=True)
        device_tables = padded_tables(tables, len(tables)).to(self.model.device, non_blocking=True)
        return self.model.prefill(list(ids.split(lengths)), device_tables, self.cache), self.step_kernel(sum(lengths))

    def decode(
        self, tokens: list[int] | torch.Tensor, positions: list[int], tables: list[list[int]]
    ) -> tuple[torch.Tensor, StepKernel]:
        """Row i feeds tokens[i] at positions[i] of the sequence whose blocks are tables[i]; returns logits [rows,
        vocab] and the kernel that ran. tokens may be a device tensor (the previous step's sampled ids, with
        overlapped decode): then nothing waits for it."""
        rows = len(positions)
        padded = self.batch_bucket(rows)
        host_tokens = [0] * padded if isinstance(tokens, torch.Tensor) else tokens + [0] * (padded - rows)
        host = torch.tensor([host_tokens, positions + [0] * (padded - rows)], dtype=torch.int64)
        host_tables = padded_tables(tables, padded)
        if self.cuda_graphs:
            host, host_tables = host.pin_memory(), host_tables.pin_memory()
        self.tokens[:padded].copy_(host[0], non_blocking=True)
        if isinstance(tokens, torch.Tensor):
            self.tokens[:rows].copy_(tokens)  # stream-ordered after the step that sampled them
        self.positions[:padded].copy_(host[1], non_blocking=True)
        # Only the columns in use: a row reads no column past its own position's block.
        self.tables[:padded, : host_tables.shape[1]].copy_(host_tables, non_blocking=True)
        pin = self.router.pinned.name if self.router.pinned is not None else ""
        key = (pin, padded)
        captured = self.graphs.get(key)
        if captured is not None:
            captured.graph.replay()
            logits = captured.logits
        else:
            logits = self._decode_rows(padded)
            if self.cuda_graphs and key not in self.eager_keys:
                self._capture(key)
        return logits[:rows], self.step_kernel(padded)

    def _capture(self, key: tuple[str, int]) -> None:
        pin, padded = key
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: other models' scheduler threads keep running their own steps while this one captures.
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                logits = self._decode_rows(padded)
        except Exception as error:  # e.g. a kernel that synchronizes: this key stays eager
            self.eager_keys[key] = error.with_traceback(None)  # no frames kept alive: they hold capture tensors
            log.warning("cuda_graph_capture_failed", pin=pin or "auto", batch=padded, error=str(error))
            return
        self.graphs[key] = CapturedDecode(graph, logits)
        log.info("cuda_graph_captured", pin=pin or "auto", batch=padded, graphs=len(self.graphs))

    def _decode_rows(self, padded: int) -> torch.Tensor:
        return self.model.decode(self.tokens[:padded], self.positions[:padded], self.tables[:padded], self.cache)


def padded_tables(tables: list[list[int]], rows: int) -> torch.Tensor:
    """int32 [rows, longest table]: the tables, each padded (and the missing rows filled) with the padding block.
    At least one column, so a row given no blocks (a warm-up step) reads and writes only the padding block."""
    width = max([1, *(len(table) for table in tables)])
    filled = [table + [PADDING_BLOCK] * (width - len(table)) for table in tables]
    filled += [[PADDING_BLOCK] * width] * (rows - len(tables))
    return torch.tensor(filled, dtype=torch.int32)
