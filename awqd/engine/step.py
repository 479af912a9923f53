"""The engine's forward steps: decode as a CUDA graph per (kernel pin, batch bucket); prefill of one prompt as a
CUDA graph per (kernel pin, prompt-length bucket), and of several prompts eagerly.

Decode rows are compact: row i is whichever sequence the scheduler put in place i, and its token, position and
block table (awqd.engine.kv_cache) are copied into static buffers of max_rows rows before each step. Decode pads
the batch to a bucket (1, 2, 4, ... up to max_rows); the quantized linears pick their kernel by the padded row
count, so a graph captured for a bucket holds the kernel the decision table names for it (or the pinned one: the
pin is part of the graph's key). Padding rows point at the padding block, position 0, which no sequence owns.
Decode attention reads each row's length and blocks from those buffers on the device, so one graph serves a
bucket at every position and block assignment.

A prompt that arrives alone (the single-query case, where time to first token is the prompt's one forward pass)
is padded to a prompt-length bucket (PREFILL_BUCKETS, 1.5x apart, up to 512 tokens): its rows are the bucket's
rows, the padding rows write their k/v only to the padding block and their logits are not read. Eagerly, a prefill
launches some 400 kernels from Python, so its time depends on the host's speed; replayed, it does not. A prompt
alone after a prefix-cache hit whose rest fits a bucket replays a graph of its rest: padded to a power-of-two
bucket, attending over its sequence gathered into a number of key slots (a second set of buckets, hit_buckets).
Eagerly, that rest was host-bound: on an H100 host, 45.7 ms against 10.5 replayed, for a 1024-token prompt with
896 cached (bench/results/h100-2026-12-05-lone-hit-graph). Within the prefill buckets, the rest's graph also beats
replaying the whole prompt's: on an H200, 9.5 against 16.5 ms for a 384-token prompt with 256 cached
(bench/results/h200-2026-12-05-lone-hit-within-buckets). Several prompts admitted together stay eager, at their
exact total: they are throughput, not latency.

A key's graph is captured right after its first step, which runs eagerly (and so compiles the Triton kernels for
that shape); later steps replay it. Warm-up (awqd.engine.warmup) runs that first step for every unpinned bucket
before the model turns ready; a pinned key is captured on its first request. A capture that fails (some kernels
cannot be captured) leaves that key eager, with the reason kept and logged. On the CPU, and with --no-cuda-graphs,
every step is eager: the same code, minus capture.
"""

import functools
import itertools
from dataclasses import dataclass

import structlog
import torch

from awqd.engine.kv_cache import BLOCK_TOKENS, PADDING_BLOCK, KvCache
from awqd.engine.layers.attention import varlen_flash_serves
from awqd.engine.model import DecoderModel
from awqd.kernels import split_counters
from awqd.kernels.linear import KernelRouter

log = structlog.get_logger("awqd.engine")


@dataclass(frozen=True)
class StepKernel:
    bucket: int  # the decision table's bucket for the step's token count
    kernel: str


PREFILL_BUCKETS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)  # padded lengths of a prompt that comes alone
PADDING_SEQUENCE = 1  # a padded prefill's table row of padding blocks


@dataclass
class Captured:
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
        # Decode attention's and the split-K linears' (awqd.kernels.split_counters): every launch of this runner's
        # is on one stream, and its graphs replay there, so they can share one set.
        kv_heads = model.shape.num_kv_heads
        self.split_counters = split_counters.new(model.device, max(max_rows * kv_heads, split_counters.CAPACITY))
        self.graphs: dict[tuple[str, int], Captured] = {}  # decode, by (pin, batch bucket)
        self.eager_keys: dict[tuple[str, int], Exception] = {}  # keys whose capture failed, and why
        # A prompt prefilled alone is padded to a bucket where graphs are captured; elsewhere padding would only cost.
        fitting = tuple(bucket for bucket in PREFILL_BUCKETS if bucket < cache.plan.max_seq_len)
        self.prefill_buckets = fitting if self.cuda_graphs else ()
        self.prefill_graphs: dict[tuple[str, int], Captured] = {}  # by (pin, prompt-length bucket)
        self.prefill_eager_keys: dict[tuple[str, int], Exception] = {}
        longest = max(fitting, default=0)
        self.prefill_ids = torch.zeros(longest, dtype=torch.int64, device=model.device)
        self.prefill_sequences = torch.zeros(longest, dtype=torch.int64, device=model.device)
        self.prefill_positions = torch.arange(longest, dtype=torch.int64, device=model.device)
        self.prefill_last = torch.zeros(1, dtype=torch.int64, device=model.device)
        self.prefill_tables = torch.full((2, table_shape[1]), PADDING_BLOCK, dtype=torch.int32, device=model.device)
        # A lone prompt after a prefix-cache hit whose uncached rest fits a prefill bucket (hit_buckets)
        self.hit_positions = torch.zeros(longest, dtype=torch.int64, device=model.device)
        self.hit_offsets = torch.zeros(6, dtype=torch.int64, device=model.device)
        self.hit_graphs: dict[tuple[str, tuple[int, int]], Captured] = {}  # by (pin, (rows, keys))
        self.hit_eager_keys: dict[tuple[str, tuple[int, int]], Exception] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None

    def batch_bucket(self, rows: int) -> int:
        return next(bucket for bucket in self.batch_buckets if bucket >= rows)

    def step_kernel(self, tokens: int) -> StepKernel:
        return StepKernel(self.router.bucket_for(tokens), self.router.candidate_for(tokens).name)

    def prefill(
        self, prompts: list[list[int]], tables: list[list[int]], cached: list[int] | None = None
    ) -> tuple[torch.Tensor, StepKernel]:
        """prompts[i] into the blocks tables[i] in one forward pass: logits [len(prompts), vocab] of each prompt's
        last position, and the kernel that ran (picked by the token count the pass runs). The first cached[i]
        positions of prompt i are in its blocks already (a prefix-cache hit, whole blocks shared with other
        sequences): they are neither run nor written, except by a lone prompt's padded pass (_prefill_padded)."""
        cached = cached or [0] * len(prompts)
        hit = self.hit_buckets(len(prompts[0]), cached[0]) if len(prompts) == 1 else None
        if hit is not None:
            return self.prefill_after_hit(prompts[0], tables[0], cached[0], *hit)
        if len(prompts) == 1 and len(prompts[0]) <= max(self.prefill_buckets, default=0):
            return self._prefill_padded(prompts[0], tables[0], cached[0])
        rest = [prompt[start:] for prompt, start in zip(prompts, cached, strict=True)]
        lengths = [len(prompt) for prompt in rest]
        ids = torch.tensor([token for prompt in rest for token in prompt], dtype=torch.int64)
        ids = ids.to(self.model.device, non_blocking=True)
        device_tables = padded_tables(tables, len(tables)).to(self.model.device, non_blocking=True)
        with split_counters.held(self.split_counters):
            logits = self.model.prefill(list(ids.split(lengths)), device_tables, self.cache, cached)
        return logits, self.step_kernel(sum(lengths))

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
        logits = self._run("decode", padded, self.graphs, self.eager_keys, lambda: self._decode_rows(padded))
        return logits[:rows], self.step_kernel(padded)

    def hit_buckets(self, length: int, cached: int) -> tuple[int, int] | None:
        """The (rows, keys) buckets of a lone prompt's pass after a prefix-cache hit of `cached` positions, or None
        where it has none: no hit, no CUDA graphs, a rest longer than the longest prefill bucket, or a span past
        what flash serves (key_buckets)."""
        rows = next((bucket for bucket in self.hit_row_buckets if bucket >= length - cached), None)
        if not cached or rows is None:
            return None
        keys = next((bucket for bucket in self.key_buckets if bucket >= cached + rows), None)
        return None if keys is None else (rows, keys)

    @property
    def hit_row_buckets(self) -> tuple[int, ...]:
        """A rest after a hit is padded to a power of two, or to the longest prefill bucket: with a second dimension
        (keys) to the graphs, 2x steps keep their count down."""
        longest = max(self.prefill_buckets, default=0)
        return tuple(bucket for bucket in self.prefill_buckets if bucket & (bucket - 1) == 0 or bucket == longest)

    @property
    def key_buckets(self) -> tuple[int, ...]:
        """The key slots a pass after a hit gathers its sequence into: doubling from twice the shortest prefill bucket
        (a hit caches a block and leaves a token) to the context plus the longest prefill bucket, which any hit's
        start and padded rest fit.

        A captured pass attends with flash only, up to the sliding window if any: the masked form would hold a score
        for every slot of every row and head in the graph's memory (half a billion at 512 rows, 32 heads and 32k
        slots). Where flash does not serve (an older GPU, fp32), there are no such graphs."""
        if not self.prefill_buckets:
            return ()
        limit = self.cache.plan.max_seq_len + max(self.prefill_buckets)
        doubling = (2 * min(self.prefill_buckets) * 2**i for i in range(64))
        buckets = (*itertools.takewhile(lambda bucket: bucket < limit, doubling), limit)
        if not self.cuda_graphs:  # eager: the CPU's tests of the same pass, on its masked form
            return buckets
        model = self.model
        serves = functools.partial(varlen_flash_serves, model.device, model.dtype, model.attention_shape)
        return tuple(bucket for bucket in buckets if serves(bucket))

    def hit_shapes(self) -> list[tuple[int, int]]:
        """Every (rows, keys) pair some hit reaches (whole cached blocks, a rest of a token or more, within the
        context): what warm-up captures. For a cached start and a row bucket, the bucket's longest rest reaches
        whatever a shorter one does: the keys depend on the bucket, and only a long enough prompt has a pass."""
        max_seq_len, shapes = self.cache.plan.max_seq_len, set()
        for cached in range(BLOCK_TOKENS, max_seq_len, BLOCK_TOKENS):
            for shorter, rows in itertools.pairwise((0, *self.hit_row_buckets)):
                rest = min(rows, max_seq_len - cached)
                shape = self.hit_buckets(cached + rest, cached) if rest > shorter else None
                if shape is not None:
                    shapes.add(shape)
        return sorted(shapes)

    def _prefill_padded(self, prompt: list[int], table: list[int], cached: int) -> tuple[torch.Tensor, StepKernel]:
        """One prompt, padded to its bucket, in the static prefill buffers; replayed once its graph is captured.

        The graph attends over the prompt's own rows. It serves a prompt without a hit, and one after a hit that has
        no graph of its rest (flash does not serve its span: hit_buckets): that runs the whole prompt, whose first
        `cached` rows, like the padding rows, write their k/v to the padding block. Replaying the whole prompt beats
        launching its rest eagerly, which is host-bound (bench/prefix_cache_check.py)."""
        length, padded = len(prompt), next(bucket for bucket in self.prefill_buckets if bucket >= len(prompt))
        sequences = [PADDING_SEQUENCE] * cached + [0] * (length - cached) + [PADDING_SEQUENCE] * (padded - length)
        self._stage(prompt, sequences, table, [])
        graphs, failures = self.prefill_graphs, self.prefill_eager_keys
        logits = self._run("prefill", padded, graphs, failures, lambda: self._prefill_rows(padded))
        return logits, self.step_kernel(padded)

    def prefill_after_hit(
        self, prompt: list[int], table: list[int], cached: int, rows: int, keys: int
    ) -> tuple[torch.Tensor, StepKernel]:
        """A lone prompt's uncached rest, padded to `rows`, attending over its sequence gathered into `keys` slots
        (hit_buckets picks them); replayed once the (rows, keys) graph is captured. The padding rows sit at
        position 0 of the padding sequence, as in _prefill_padded. Its cached positions are neither run nor
        written."""
        rest = len(prompt) - cached
        padding = rows - rest
        span = cached + rest
        positions = [*range(cached, span), *[0] * padding]
        offsets = [0, rest, rows, 0, span, span + padding]
        extra = self._stage(prompt[cached:], [0] * rest + [PADDING_SEQUENCE] * padding, table, [*positions, *offsets])
        self.hit_positions[:rows].copy_(extra[:rows], non_blocking=True)
        self.hit_offsets.copy_(extra[rows:], non_blocking=True)
        graphs, failures = self.hit_graphs, self.hit_eager_keys
        logits = self._run("prefill after a hit", (rows, keys), graphs, failures, lambda: self._hit_rows(rows, keys))
        return logits, self.step_kernel(rows)

    def _stage(self, ids: list[int], sequences: list[int], table: list[int], extra: list[int]) -> torch.Tensor:
        """Copies a lone prompt's rows into the static prefill buffers: its ids (padded with 0 to as many rows as
        `sequences` names), each row's table row, its blocks and its last row. Returns `extra` on the host, pinned
        with the rest, for the caller to copy on."""
        padded, length = len(sequences), len(ids)
        host = torch.tensor([*ids, *[0] * (padded - length), *sequences, length - 1, *extra], dtype=torch.int64)
        host_table = padded_tables([table], 1)
        if self.cuda_graphs:
            host, host_table = host.pin_memory(), host_table.pin_memory()
        ids, sequences, last, extra_host = host.split([padded, padded, 1, len(extra)])
        self.prefill_ids[:padded].copy_(ids, non_blocking=True)
        self.prefill_sequences[:padded].copy_(sequences, non_blocking=True)
        self.prefill_last.copy_(last, non_blocking=True)
        self.prefill_tables[0].fill_(PADDING_BLOCK)
        self.prefill_tables[0, : host_table.shape[1]].copy_(host_table[0], non_blocking=True)
        return extra_host

    def _run(self, phase: str, size: int | tuple[int, int], graphs: dict, failures: dict, forward) -> torch.Tensor:
        """Replays the (pin, size) graph if there is one; else runs eagerly, then captures it (with CUDA graphs)."""
        pin = self.router.pinned.name if self.router.pinned is not None else ""
        key = (pin, size)
        captured = graphs.get(key)
        if captured is not None:
            captured.graph.replay()
            return captured.logits
        with split_counters.held(self.split_counters):  # the graph captured here keeps them
            logits = forward()
            if self.cuda_graphs and key not in failures:
                self._capture(phase, key, graphs, failures, forward)
        return logits

    def _capture(self, phase: str, key: tuple[str, int], graphs: dict, failures: dict, forward) -> None:
        pin, size = key
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: other models' scheduler threads keep running their own steps while this one captures.
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                logits = forward()
        except Exception as error:  # e.g. a kernel that synchronizes: this key stays eager
            failures[key] = error.with_traceback(None)  # no frames kept alive: they hold capture tensors
            log.warning("cuda_graph_capture_failed", phase=phase, pin=pin or "auto", size=size, error=str(error))
            return
        graphs[key] = Captured(graph, logits)
        log.info("cuda_graph_captured", phase=phase, pin=pin or "auto", size=size, graphs=len(graphs))

    def _decode_rows(self, padded: int) -> torch.Tensor:
        tokens, positions, tables = (t[:padded] for t in (self.tokens, self.positions, self.tables))
        return self.model.decode(tokens, positions, tables, self.cache, self.split_counters)

    def _prefill_rows(self, padded: int) -> torch.Tensor:
        ids, sequences, positions = (
            t[:padded] for t in (self.prefill_ids, self.prefill_sequences, self.prefill_positions)
        )
        return self.model.prefill_rows(
            ids, sequences, positions, [padded], None, self.prefill_last, self.prefill_tables, self.cache
        )

    def _hit_rows(self, rows: int, keys: int) -> torch.Tensor:
        ids, sequences, positions = self.prefill_ids[:rows], self.prefill_sequences[:rows], self.hit_positions[:rows]
        tables, last = self.prefill_tables, self.prefill_last
        return self.model.prefill_after_hit(ids, sequences, positions, self.hit_offsets, last, tables, self.cache, keys)


def padded_tables(tables: list[list[int]], rows: int) -> torch.Tensor:
    """int32 [rows, longest table]: the tables, each padded (and the missing rows filled) with the padding block.
    At least one column, so a row given no blocks (a warm-up step) reads and writes only the padding block."""
    width = max([1, *(len(table) for table in tables)])
    filled = [table + [PADDING_BLOCK] * (width - len(table)) for table in tables]
    filled += [[PADDING_BLOCK] * width] * (rows - len(tables))
    return torch.tensor(filled, dtype=torch.int32)
