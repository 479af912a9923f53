"""A Benchmark request as awqd sees it, and the checks that need no node state."""

from dataclasses import dataclass

from awqd.benchmark.quality import decode_text
from awqd.errors import InvalidArgument
from awqd.models.synth import ARCHITECTURES

MODES = ("kernel", "single_query", "batch_sweep", "quality")
MAX_BATCH_TOKENS = 4096  # 8x the largest decision bucket: beyond it a step is a prefill, not a kernel benchmark
MAX_BATCH_SIZES = 32
MAX_KERNELS = 16
MAX_ITERATIONS = 1000
MAX_WARMUP_ITERATIONS = 100


@dataclass(frozen=True)
class BenchmarkParams:
    mode: str  # one of MODES, "" when unspecified, "unknown (N)" for an enum value this daemon does not know
    model: str
    architecture: str
    device_index: int | None
    kernels: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    prompt_tokens: int
    new_tokens: int
    iterations: int  # 0: the daemon's default
    warmup_iterations: int  # 0: the daemon's default
    text: bytes = b""  # QUALITY: the text to score
    window_tokens: int = 0  # QUALITY: tokens per window; 0: the default for the model

    def validate(self) -> None:
        """Raises InvalidArgument naming the field."""
        if self.mode not in MODES:
            values = ", ".join(f"BENCHMARK_MODE_{mode.upper()}" for mode in MODES)
            raise InvalidArgument("mode", f"{self.mode or 'BENCHMARK_MODE_UNSPECIFIED'}: must be one of {values}")
        if self.iterations > MAX_ITERATIONS:
            raise InvalidArgument("iterations", f"{self.iterations} exceeds the cap of {MAX_ITERATIONS}")
        if self.warmup_iterations > MAX_WARMUP_ITERATIONS:
            raise InvalidArgument(
                "warmup_iterations", f"{self.warmup_iterations} exceeds the cap of {MAX_WARMUP_ITERATIONS}"
            )
        if len(self.kernels) > MAX_KERNELS:
            raise InvalidArgument("kernels", f"{len(self.kernels)} names exceed the cap of {MAX_KERNELS}")
        if any(not name for name in self.kernels):
            raise InvalidArgument("kernels", "names must not be empty")
        if self.mode != "quality":
            for name, value in (("text", self.text), ("window_tokens", self.window_tokens)):
                if value:
                    raise InvalidArgument(name, "applies to QUALITY only")
        if self.mode == "kernel":
            self._validate_kernel()
        elif self.mode == "single_query":
            self._validate_single_query()
        elif self.mode == "quality":
            self._validate_quality()
        else:
            self._validate_batch_sweep()

    def _validate_kernel(self) -> None:
        if bool(self.model) == bool(self.architecture):
            raise InvalidArgument("model", "KERNEL mode needs exactly one of model and architecture")
        if self.architecture and self.architecture not in ARCHITECTURES:
            raise InvalidArgument(
                "architecture", f"unknown architecture {self.architecture!r}; known: {', '.join(ARCHITECTURES)}"
            )
        if "auto" in self.kernels:
            raise InvalidArgument("kernels", "'auto' is a dispatch, not a kernel; KERNEL mode times candidates")
        if len(set(self.batch_sizes)) > MAX_BATCH_SIZES:
            raise InvalidArgument(
                "batch_sizes", f"{len(set(self.batch_sizes))} sizes exceed the cap of {MAX_BATCH_SIZES}"
            )
        for size in self.batch_sizes:
            if not 1 <= size <= MAX_BATCH_TOKENS:
                raise InvalidArgument("batch_sizes", f"{size} is outside 1..{MAX_BATCH_TOKENS} tokens")
        for name, value in (("prompt_tokens", self.prompt_tokens), ("new_tokens", self.new_tokens)):
            if value:
                raise InvalidArgument(name, "applies to SINGLE_QUERY only")

    def _validate_single_query(self) -> None:
        if not self.model:
            raise InvalidArgument("model", "SINGLE_QUERY measures a hosted model: name one")
        if self.architecture:
            raise InvalidArgument("architecture", "applies to KERNEL mode only; SINGLE_QUERY runs a hosted model")
        if self.batch_sizes:
            raise InvalidArgument("batch_sizes", "SINGLE_QUERY runs one sequence; batch sizes apply to KERNEL mode")
        if self.prompt_tokens < 1:
            raise InvalidArgument("prompt_tokens", "must be at least 1")
        if self.new_tokens < 1:
            raise InvalidArgument("new_tokens", "must be at least 1")

    def _validate_batch_sweep(self) -> None:
        if not self.model:
            raise InvalidArgument("model", "BATCH_SWEEP measures a hosted model: name one")
        if self.architecture:
            raise InvalidArgument("architecture", "applies to KERNEL mode only; BATCH_SWEEP runs a hosted model")
        if self.kernels:
            raise InvalidArgument("kernels", "BATCH_SWEEP runs the model's own dispatch; name no kernels")
        if not self.batch_sizes:
            raise InvalidArgument("batch_sizes", "BATCH_SWEEP needs the concurrency levels to measure, e.g. 1, 8, 32")
        if len(set(self.batch_sizes)) > MAX_BATCH_SIZES:
            raise InvalidArgument(
                "batch_sizes", f"{len(set(self.batch_sizes))} levels exceed the cap of {MAX_BATCH_SIZES}"
            )
        if any(size < 1 for size in self.batch_sizes):
            raise InvalidArgument("batch_sizes", "concurrency levels must be at least 1")
        if self.prompt_tokens < 1:
            raise InvalidArgument("prompt_tokens", "must be at least 1")
        if self.new_tokens < 1:
            raise InvalidArgument("new_tokens", "must be at least 1")

    def _validate_quality(self) -> None:
        if not self.model:
            raise InvalidArgument("model", "QUALITY scores a hosted model: name one")
        if self.architecture:
            raise InvalidArgument("architecture", "applies to KERNEL mode only; QUALITY runs a hosted model")
        if "auto" in self.kernels:
            raise InvalidArgument("kernels", "'auto' is a dispatch, not a kernel; QUALITY pins one kernel at a time")
        for name, value in (
            ("batch_sizes", self.batch_sizes),
            ("prompt_tokens", self.prompt_tokens),
            ("new_tokens", self.new_tokens),
            ("iterations", self.iterations),
            ("warmup_iterations", self.warmup_iterations),
        ):
            if value:
                raise InvalidArgument(name, "does not apply to QUALITY, which scores the text once per kernel")
        decode_text(self.text)
