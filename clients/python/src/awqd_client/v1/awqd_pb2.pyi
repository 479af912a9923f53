import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_KIND_UNSPECIFIED: _ClassVar[DeviceKind]
    DEVICE_KIND_CPU: _ClassVar[DeviceKind]
    DEVICE_KIND_CUDA: _ClassVar[DeviceKind]

class KernelFamily(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KERNEL_FAMILY_UNSPECIFIED: _ClassVar[KernelFamily]
    KERNEL_FAMILY_REFERENCE: _ClassVar[KernelFamily]
    KERNEL_FAMILY_GEMM: _ClassVar[KernelFamily]
    KERNEL_FAMILY_GEMV: _ClassVar[KernelFamily]
    KERNEL_FAMILY_GEMV_FAST: _ClassVar[KernelFamily]
    KERNEL_FAMILY_DEQUANT_MATMUL: _ClassVar[KernelFamily]

class DecisionSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_SOURCE_UNSPECIFIED: _ClassVar[DecisionSource]
    DECISION_SOURCE_MEASURED: _ClassVar[DecisionSource]
    DECISION_SOURCE_CACHE_VALIDATED: _ClassVar[DecisionSource]
    DECISION_SOURCE_CAPABILITY_RULE: _ClassVar[DecisionSource]
    DECISION_SOURCE_FORCED: _ClassVar[DecisionSource]

class QuantPacking(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUANT_PACKING_UNSPECIFIED: _ClassVar[QuantPacking]
    QUANT_PACKING_GEMM: _ClassVar[QuantPacking]
    QUANT_PACKING_GEMV: _ClassVar[QuantPacking]
    QUANT_PACKING_GEMV_FAST: _ClassVar[QuantPacking]
    QUANT_PACKING_PACK_QUANTIZED: _ClassVar[QuantPacking]

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_LOADING: _ClassVar[ModelState]
    MODEL_STATE_READY: _ClassVar[ModelState]
    MODEL_STATE_FAILED: _ClassVar[ModelState]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]

class BenchmarkMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BENCHMARK_MODE_UNSPECIFIED: _ClassVar[BenchmarkMode]
    BENCHMARK_MODE_KERNEL: _ClassVar[BenchmarkMode]
    BENCHMARK_MODE_SINGLE_QUERY: _ClassVar[BenchmarkMode]
    BENCHMARK_MODE_BATCH_SWEEP: _ClassVar[BenchmarkMode]
    BENCHMARK_MODE_QUALITY: _ClassVar[BenchmarkMode]

class DeviceHealth(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_HEALTH_UNSPECIFIED: _ClassVar[DeviceHealth]
    DEVICE_HEALTH_OK: _ClassVar[DeviceHealth]
    DEVICE_HEALTH_DEGRADED: _ClassVar[DeviceHealth]
DEVICE_KIND_UNSPECIFIED: DeviceKind
DEVICE_KIND_CPU: DeviceKind
DEVICE_KIND_CUDA: DeviceKind
KERNEL_FAMILY_UNSPECIFIED: KernelFamily
KERNEL_FAMILY_REFERENCE: KernelFamily
KERNEL_FAMILY_GEMM: KernelFamily
KERNEL_FAMILY_GEMV: KernelFamily
KERNEL_FAMILY_GEMV_FAST: KernelFamily
KERNEL_FAMILY_DEQUANT_MATMUL: KernelFamily
DECISION_SOURCE_UNSPECIFIED: DecisionSource
DECISION_SOURCE_MEASURED: DecisionSource
DECISION_SOURCE_CACHE_VALIDATED: DecisionSource
DECISION_SOURCE_CAPABILITY_RULE: DecisionSource
DECISION_SOURCE_FORCED: DecisionSource
QUANT_PACKING_UNSPECIFIED: QuantPacking
QUANT_PACKING_GEMM: QuantPacking
QUANT_PACKING_GEMV: QuantPacking
QUANT_PACKING_GEMV_FAST: QuantPacking
QUANT_PACKING_PACK_QUANTIZED: QuantPacking
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_LOADING: ModelState
MODEL_STATE_READY: ModelState
MODEL_STATE_FAILED: ModelState
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_EOS: FinishReason
FINISH_REASON_CANCELLED: FinishReason
BENCHMARK_MODE_UNSPECIFIED: BenchmarkMode
BENCHMARK_MODE_KERNEL: BenchmarkMode
BENCHMARK_MODE_SINGLE_QUERY: BenchmarkMode
BENCHMARK_MODE_BATCH_SWEEP: BenchmarkMode
BENCHMARK_MODE_QUALITY: BenchmarkMode
DEVICE_HEALTH_UNSPECIFIED: DeviceHealth
DEVICE_HEALTH_OK: DeviceHealth
DEVICE_HEALTH_DEGRADED: DeviceHealth

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("node", "devices", "models")
    NODE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    node: Node
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("hostname", "awqd_version", "started_at", "uptime", "components", "gpu_discovery")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    AWQD_VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    GPU_DISCOVERY_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    awqd_version: str
    started_at: _timestamp_pb2.Timestamp
    uptime: _duration_pb2.Duration
    components: _containers.RepeatedCompositeFieldContainer[Component]
    gpu_discovery: GpuDiscovery
    def __init__(self, hostname: _Optional[str] = ..., awqd_version: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., uptime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., components: _Optional[_Iterable[_Union[Component, _Mapping]]] = ..., gpu_discovery: _Optional[_Union[GpuDiscovery, _Mapping]] = ...) -> None: ...

class Component(_message.Message):
    __slots__ = ("name", "version", "available", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    available: bool
    reason: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., available: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class GpuDiscovery(_message.Message):
    __slots__ = ("nvml_available", "nvml_error", "nvml_device_count", "torch_cuda_available", "torch_device_count", "warnings")
    NVML_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    NVML_ERROR_FIELD_NUMBER: _ClassVar[int]
    NVML_DEVICE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TORCH_CUDA_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    TORCH_DEVICE_COUNT_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    nvml_available: bool
    nvml_error: str
    nvml_device_count: int
    torch_cuda_available: bool
    torch_device_count: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, nvml_available: _Optional[bool] = ..., nvml_error: _Optional[str] = ..., nvml_device_count: _Optional[int] = ..., torch_cuda_available: _Optional[bool] = ..., torch_device_count: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("index", "kind", "uuid", "name", "compute_capability", "memory_total_bytes", "memory_free_bytes", "torch_device", "kernels", "decisions", "selection", "health", "health_reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TORCH_DEVICE_FIELD_NUMBER: _ClassVar[int]
    KERNELS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    HEALTH_REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    kind: DeviceKind
    uuid: str
    name: str
    compute_capability: str
    memory_total_bytes: int
    memory_free_bytes: int
    torch_device: str
    kernels: _containers.RepeatedCompositeFieldContainer[KernelCandidate]
    decisions: _containers.RepeatedCompositeFieldContainer[KernelDecision]
    selection: KernelSelection
    health: DeviceHealth
    health_reason: str
    def __init__(self, index: _Optional[int] = ..., kind: _Optional[_Union[DeviceKind, str]] = ..., uuid: _Optional[str] = ..., name: _Optional[str] = ..., compute_capability: _Optional[str] = ..., memory_total_bytes: _Optional[int] = ..., memory_free_bytes: _Optional[int] = ..., torch_device: _Optional[str] = ..., kernels: _Optional[_Iterable[_Union[KernelCandidate, _Mapping]]] = ..., decisions: _Optional[_Iterable[_Union[KernelDecision, _Mapping]]] = ..., selection: _Optional[_Union[KernelSelection, _Mapping]] = ..., health: _Optional[_Union[DeviceHealth, str]] = ..., health_reason: _Optional[str] = ...) -> None: ...

class KernelCandidate(_message.Message):
    __slots__ = ("name", "family", "supported", "reason", "requires", "layout", "correctness", "graph_replay", "rejected", "plugin")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    CORRECTNESS_FIELD_NUMBER: _ClassVar[int]
    GRAPH_REPLAY_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    family: KernelFamily
    supported: bool
    reason: str
    requires: _containers.RepeatedScalarFieldContainer[str]
    layout: str
    correctness: CorrectnessCheck
    graph_replay: GraphReplayCheck
    rejected: str
    plugin: str
    def __init__(self, name: _Optional[str] = ..., family: _Optional[_Union[KernelFamily, str]] = ..., supported: _Optional[bool] = ..., reason: _Optional[str] = ..., requires: _Optional[_Iterable[str]] = ..., layout: _Optional[str] = ..., correctness: _Optional[_Union[CorrectnessCheck, _Mapping]] = ..., graph_replay: _Optional[_Union[GraphReplayCheck, _Mapping]] = ..., rejected: _Optional[str] = ..., plugin: _Optional[str] = ...) -> None: ...

class GraphReplayCheck(_message.Message):
    __slots__ = ("passed", "error", "captured")
    PASSED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_FIELD_NUMBER: _ClassVar[int]
    passed: bool
    error: str
    captured: bool
    def __init__(self, passed: _Optional[bool] = ..., error: _Optional[str] = ..., captured: _Optional[bool] = ...) -> None: ...

class CorrectnessCheck(_message.Message):
    __slots__ = ("passed", "max_relative_error", "tolerance", "error")
    PASSED_FIELD_NUMBER: _ClassVar[int]
    MAX_RELATIVE_ERROR_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    passed: bool
    max_relative_error: float
    tolerance: float
    error: str
    def __init__(self, passed: _Optional[bool] = ..., max_relative_error: _Optional[float] = ..., tolerance: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class KernelDecision(_message.Message):
    __slots__ = ("batch_tokens", "kernel", "source", "reason", "timings", "rejected")
    BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    batch_tokens: int
    kernel: str
    source: DecisionSource
    reason: str
    timings: _containers.RepeatedCompositeFieldContainer[KernelTiming]
    rejected: _containers.RepeatedCompositeFieldContainer[KernelRejection]
    def __init__(self, batch_tokens: _Optional[int] = ..., kernel: _Optional[str] = ..., source: _Optional[_Union[DecisionSource, str]] = ..., reason: _Optional[str] = ..., timings: _Optional[_Iterable[_Union[KernelTiming, _Mapping]]] = ..., rejected: _Optional[_Iterable[_Union[KernelRejection, _Mapping]]] = ...) -> None: ...

class KernelRejection(_message.Message):
    __slots__ = ("kernel", "reason")
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    kernel: str
    reason: str
    def __init__(self, kernel: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class KernelTiming(_message.Message):
    __slots__ = ("kernel", "median_ms", "p10_ms", "p90_ms", "cuda_graph")
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    MEDIAN_MS_FIELD_NUMBER: _ClassVar[int]
    P10_MS_FIELD_NUMBER: _ClassVar[int]
    P90_MS_FIELD_NUMBER: _ClassVar[int]
    CUDA_GRAPH_FIELD_NUMBER: _ClassVar[int]
    kernel: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    cuda_graph: bool
    def __init__(self, kernel: _Optional[str] = ..., median_ms: _Optional[float] = ..., p10_ms: _Optional[float] = ..., p90_ms: _Optional[float] = ..., cuda_graph: _Optional[bool] = ...) -> None: ...

class KernelSelection(_message.Message):
    __slots__ = ("source", "measured_at", "duration", "fingerprint", "notes", "copy_bandwidth_gbps", "worker_startup", "worker_restarts", "graph_buckets")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MEASURED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    COPY_BANDWIDTH_GBPS_FIELD_NUMBER: _ClassVar[int]
    WORKER_STARTUP_FIELD_NUMBER: _ClassVar[int]
    WORKER_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    GRAPH_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    source: DecisionSource
    measured_at: _timestamp_pb2.Timestamp
    duration: _duration_pb2.Duration
    fingerprint: str
    notes: _containers.RepeatedScalarFieldContainer[str]
    copy_bandwidth_gbps: float
    worker_startup: _duration_pb2.Duration
    worker_restarts: int
    graph_buckets: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, source: _Optional[_Union[DecisionSource, str]] = ..., measured_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., fingerprint: _Optional[str] = ..., notes: _Optional[_Iterable[str]] = ..., copy_bandwidth_gbps: _Optional[float] = ..., worker_startup: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., worker_restarts: _Optional[int] = ..., graph_buckets: _Optional[_Iterable[int]] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "path", "architecture", "quant_config", "device", "weight_memory_bytes", "extra_layout_memory_bytes", "state", "error", "kernel", "context_length", "load_duration", "kv_cache_tokens", "kv_cache_slots", "max_sequence_tokens", "kv_cache_bytes", "warmed_up_at", "warmup_duration", "warmup_graphs", "warmup_graph_memory_bytes", "kv_cache_blocks", "kv_cache_block_tokens", "kv_cache_blocks_in_use", "replicas", "prefix_caching", "kv_cache_blocks_cached")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    QUANT_CONFIG_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXTRA_LAYOUT_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LOAD_DURATION_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    WARMED_UP_AT_FIELD_NUMBER: _ClassVar[int]
    WARMUP_DURATION_FIELD_NUMBER: _ClassVar[int]
    WARMUP_GRAPHS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_GRAPH_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BLOCKS_IN_USE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHING_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BLOCKS_CACHED_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    architecture: str
    quant_config: QuantConfig
    device: str
    weight_memory_bytes: int
    extra_layout_memory_bytes: int
    state: ModelState
    error: str
    kernel: str
    context_length: int
    load_duration: _duration_pb2.Duration
    kv_cache_tokens: int
    kv_cache_slots: int
    max_sequence_tokens: int
    kv_cache_bytes: int
    warmed_up_at: _timestamp_pb2.Timestamp
    warmup_duration: _duration_pb2.Duration
    warmup_graphs: int
    warmup_graph_memory_bytes: int
    kv_cache_blocks: int
    kv_cache_block_tokens: int
    kv_cache_blocks_in_use: int
    replicas: _containers.RepeatedCompositeFieldContainer[ModelReplica]
    prefix_caching: bool
    kv_cache_blocks_cached: int
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., architecture: _Optional[str] = ..., quant_config: _Optional[_Union[QuantConfig, _Mapping]] = ..., device: _Optional[str] = ..., weight_memory_bytes: _Optional[int] = ..., extra_layout_memory_bytes: _Optional[int] = ..., state: _Optional[_Union[ModelState, str]] = ..., error: _Optional[str] = ..., kernel: _Optional[str] = ..., context_length: _Optional[int] = ..., load_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., kv_cache_tokens: _Optional[int] = ..., kv_cache_slots: _Optional[int] = ..., max_sequence_tokens: _Optional[int] = ..., kv_cache_bytes: _Optional[int] = ..., warmed_up_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., warmup_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., warmup_graphs: _Optional[int] = ..., warmup_graph_memory_bytes: _Optional[int] = ..., kv_cache_blocks: _Optional[int] = ..., kv_cache_block_tokens: _Optional[int] = ..., kv_cache_blocks_in_use: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[ModelReplica, _Mapping]]] = ..., prefix_caching: _Optional[bool] = ..., kv_cache_blocks_cached: _Optional[int] = ...) -> None: ...

class ModelReplica(_message.Message):
    __slots__ = ("device", "device_uuid", "state", "error", "queued_requests", "running_requests", "load_tokens", "kv_cache_blocks", "kv_cache_blocks_in_use", "requests_routed", "load_duration", "warmup_duration", "kv_cache_blocks_cached")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_UUID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    QUEUED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    LOAD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BLOCKS_IN_USE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_ROUTED_FIELD_NUMBER: _ClassVar[int]
    LOAD_DURATION_FIELD_NUMBER: _ClassVar[int]
    WARMUP_DURATION_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BLOCKS_CACHED_FIELD_NUMBER: _ClassVar[int]
    device: str
    device_uuid: str
    state: ModelState
    error: str
    queued_requests: int
    running_requests: int
    load_tokens: int
    kv_cache_blocks: int
    kv_cache_blocks_in_use: int
    requests_routed: int
    load_duration: _duration_pb2.Duration
    warmup_duration: _duration_pb2.Duration
    kv_cache_blocks_cached: int
    def __init__(self, device: _Optional[str] = ..., device_uuid: _Optional[str] = ..., state: _Optional[_Union[ModelState, str]] = ..., error: _Optional[str] = ..., queued_requests: _Optional[int] = ..., running_requests: _Optional[int] = ..., load_tokens: _Optional[int] = ..., kv_cache_blocks: _Optional[int] = ..., kv_cache_blocks_in_use: _Optional[int] = ..., requests_routed: _Optional[int] = ..., load_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., warmup_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., kv_cache_blocks_cached: _Optional[int] = ...) -> None: ...

class QuantConfig(_message.Message):
    __slots__ = ("w_bit", "group_size", "zero_point", "packing")
    W_BIT_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINT_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    w_bit: int
    group_size: int
    zero_point: bool
    packing: QuantPacking
    def __init__(self, w_bit: _Optional[int] = ..., group_size: _Optional[int] = ..., zero_point: _Optional[bool] = ..., packing: _Optional[_Union[QuantPacking, str]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "prompt", "prompt_token_ids", "max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "kernel", "cache_salt")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    CACHE_SALT_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    kernel: str
    cache_salt: str
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., kernel: _Optional[str] = ..., cache_salt: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text", "token_ids", "completion")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    completion: Completion
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., completion: _Optional[_Union[Completion, _Mapping]] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("finish_reason", "usage", "timings", "kernels")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    KERNELS_FIELD_NUMBER: _ClassVar[int]
    finish_reason: FinishReason
    usage: Usage
    timings: GenerationTimings
    kernels: _containers.RepeatedCompositeFieldContainer[KernelUse]
    def __init__(self, finish_reason: _Optional[_Union[FinishReason, str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timings: _Optional[_Union[GenerationTimings, _Mapping]] = ..., kernels: _Optional[_Iterable[_Union[KernelUse, _Mapping]]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "cached_prompt_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_prompt_tokens: _Optional[int] = ...) -> None: ...

class GenerationTimings(_message.Message):
    __slots__ = ("time_to_first_token_ms", "ms_per_output_token", "total_ms", "queue_ms")
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    MS_PER_OUTPUT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    time_to_first_token_ms: float
    ms_per_output_token: float
    total_ms: float
    queue_ms: float
    def __init__(self, time_to_first_token_ms: _Optional[float] = ..., ms_per_output_token: _Optional[float] = ..., total_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ...) -> None: ...

class KernelUse(_message.Message):
    __slots__ = ("phase", "batch_tokens", "kernel", "steps")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    phase: str
    batch_tokens: int
    kernel: str
    steps: int
    def __init__(self, phase: _Optional[str] = ..., batch_tokens: _Optional[int] = ..., kernel: _Optional[str] = ..., steps: _Optional[int] = ...) -> None: ...

class BenchmarkRequest(_message.Message):
    __slots__ = ("mode", "model", "architecture", "device_index", "kernels", "batch_sizes", "prompt_tokens", "new_tokens", "iterations", "warmup_iterations", "text", "window_tokens")
    MODE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_INDEX_FIELD_NUMBER: _ClassVar[int]
    KERNELS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    mode: BenchmarkMode
    model: str
    architecture: str
    device_index: int
    kernels: _containers.RepeatedScalarFieldContainer[str]
    batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    prompt_tokens: int
    new_tokens: int
    iterations: int
    warmup_iterations: int
    text: bytes
    window_tokens: int
    def __init__(self, mode: _Optional[_Union[BenchmarkMode, str]] = ..., model: _Optional[str] = ..., architecture: _Optional[str] = ..., device_index: _Optional[int] = ..., kernels: _Optional[_Iterable[str]] = ..., batch_sizes: _Optional[_Iterable[int]] = ..., prompt_tokens: _Optional[int] = ..., new_tokens: _Optional[int] = ..., iterations: _Optional[int] = ..., warmup_iterations: _Optional[int] = ..., text: _Optional[bytes] = ..., window_tokens: _Optional[int] = ...) -> None: ...

class BenchmarkResponse(_message.Message):
    __slots__ = ("progress", "report")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    progress: BenchmarkProgress
    report: BenchmarkReport
    def __init__(self, progress: _Optional[_Union[BenchmarkProgress, _Mapping]] = ..., report: _Optional[_Union[BenchmarkReport, _Mapping]] = ...) -> None: ...

class BenchmarkProgress(_message.Message):
    __slots__ = ("stage", "completed", "total", "message")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    stage: str
    completed: int
    total: int
    message: str
    def __init__(self, stage: _Optional[str] = ..., completed: _Optional[int] = ..., total: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class BenchmarkReport(_message.Message):
    __slots__ = ("mode", "device", "node", "kernel_latencies", "single_query", "batch_sweep", "roofline_bandwidth_gbps", "roofline_source", "verdict", "shapes", "started_at", "quality")
    MODE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    KERNEL_LATENCIES_FIELD_NUMBER: _ClassVar[int]
    SINGLE_QUERY_FIELD_NUMBER: _ClassVar[int]
    BATCH_SWEEP_FIELD_NUMBER: _ClassVar[int]
    ROOFLINE_BANDWIDTH_GBPS_FIELD_NUMBER: _ClassVar[int]
    ROOFLINE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    SHAPES_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    mode: BenchmarkMode
    device: Device
    node: Node
    kernel_latencies: _containers.RepeatedCompositeFieldContainer[KernelLatency]
    single_query: _containers.RepeatedCompositeFieldContainer[SingleQueryResult]
    batch_sweep: _containers.RepeatedCompositeFieldContainer[BatchSweepPoint]
    roofline_bandwidth_gbps: float
    roofline_source: str
    verdict: BenchmarkVerdict
    shapes: _containers.RepeatedScalarFieldContainer[str]
    started_at: _timestamp_pb2.Timestamp
    quality: _containers.RepeatedCompositeFieldContainer[QualityResult]
    def __init__(self, mode: _Optional[_Union[BenchmarkMode, str]] = ..., device: _Optional[_Union[Device, _Mapping]] = ..., node: _Optional[_Union[Node, _Mapping]] = ..., kernel_latencies: _Optional[_Iterable[_Union[KernelLatency, _Mapping]]] = ..., single_query: _Optional[_Iterable[_Union[SingleQueryResult, _Mapping]]] = ..., batch_sweep: _Optional[_Iterable[_Union[BatchSweepPoint, _Mapping]]] = ..., roofline_bandwidth_gbps: _Optional[float] = ..., roofline_source: _Optional[str] = ..., verdict: _Optional[_Union[BenchmarkVerdict, _Mapping]] = ..., shapes: _Optional[_Iterable[str]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., quality: _Optional[_Iterable[_Union[QualityResult, _Mapping]]] = ...) -> None: ...

class QualityResult(_message.Message):
    __slots__ = ("kernel", "family", "perplexity", "tokens_scored", "delta_vs_reference_percent", "within_bound", "bound_percent", "seconds", "error")
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SCORED_FIELD_NUMBER: _ClassVar[int]
    DELTA_VS_REFERENCE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    WITHIN_BOUND_FIELD_NUMBER: _ClassVar[int]
    BOUND_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    kernel: str
    family: str
    perplexity: float
    tokens_scored: int
    delta_vs_reference_percent: float
    within_bound: bool
    bound_percent: float
    seconds: float
    error: str
    def __init__(self, kernel: _Optional[str] = ..., family: _Optional[str] = ..., perplexity: _Optional[float] = ..., tokens_scored: _Optional[int] = ..., delta_vs_reference_percent: _Optional[float] = ..., within_bound: _Optional[bool] = ..., bound_percent: _Optional[float] = ..., seconds: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class KernelLatency(_message.Message):
    __slots__ = ("kernel", "batch_tokens", "median_ms", "p10_ms", "p90_ms", "effective_bandwidth_gbps", "speedup_vs_fp16", "cuda_graph")
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEDIAN_MS_FIELD_NUMBER: _ClassVar[int]
    P10_MS_FIELD_NUMBER: _ClassVar[int]
    P90_MS_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_BANDWIDTH_GBPS_FIELD_NUMBER: _ClassVar[int]
    SPEEDUP_VS_FP16_FIELD_NUMBER: _ClassVar[int]
    CUDA_GRAPH_FIELD_NUMBER: _ClassVar[int]
    kernel: str
    batch_tokens: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    effective_bandwidth_gbps: float
    speedup_vs_fp16: float
    cuda_graph: bool
    def __init__(self, kernel: _Optional[str] = ..., batch_tokens: _Optional[int] = ..., median_ms: _Optional[float] = ..., p10_ms: _Optional[float] = ..., p90_ms: _Optional[float] = ..., effective_bandwidth_gbps: _Optional[float] = ..., speedup_vs_fp16: _Optional[float] = ..., cuda_graph: _Optional[bool] = ...) -> None: ...

class SingleQueryResult(_message.Message):
    __slots__ = ("kernel", "time_to_first_token_ms", "ms_per_token_p50", "ms_per_token_p90", "total_ms", "tokens_per_second", "runs")
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    MS_PER_TOKEN_P50_FIELD_NUMBER: _ClassVar[int]
    MS_PER_TOKEN_P90_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    kernel: str
    time_to_first_token_ms: float
    ms_per_token_p50: float
    ms_per_token_p90: float
    total_ms: float
    tokens_per_second: float
    runs: int
    def __init__(self, kernel: _Optional[str] = ..., time_to_first_token_ms: _Optional[float] = ..., ms_per_token_p50: _Optional[float] = ..., ms_per_token_p90: _Optional[float] = ..., total_ms: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., runs: _Optional[int] = ...) -> None: ...

class BatchSweepPoint(_message.Message):
    __slots__ = ("concurrent_sequences", "tokens_per_second", "inter_token_p50_ms", "inter_token_p99_ms")
    CONCURRENT_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    INTER_TOKEN_P50_MS_FIELD_NUMBER: _ClassVar[int]
    INTER_TOKEN_P99_MS_FIELD_NUMBER: _ClassVar[int]
    concurrent_sequences: int
    tokens_per_second: float
    inter_token_p50_ms: float
    inter_token_p99_ms: float
    def __init__(self, concurrent_sequences: _Optional[int] = ..., tokens_per_second: _Optional[float] = ..., inter_token_p50_ms: _Optional[float] = ..., inter_token_p99_ms: _Optional[float] = ...) -> None: ...

class BenchmarkVerdict(_message.Message):
    __slots__ = ("fastest", "gemv_over_gemm_speedup", "summary")
    FASTEST_FIELD_NUMBER: _ClassVar[int]
    GEMV_OVER_GEMM_SPEEDUP_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    fastest: _containers.RepeatedCompositeFieldContainer[KernelLatency]
    gemv_over_gemm_speedup: float
    summary: str
    def __init__(self, fastest: _Optional[_Iterable[_Union[KernelLatency, _Mapping]]] = ..., gemv_over_gemm_speedup: _Optional[float] = ..., summary: _Optional[str] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("name", "path", "device", "kernel")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    device: str
    kernel: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., device: _Optional[str] = ..., kernel: _Optional[str] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...
