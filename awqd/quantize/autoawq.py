"""Quantize an fp16 Hugging Face model to a 4-bit AWQ checkpoint with AutoAWQ 0.2.9.

AutoAWQ is deprecated (its last release is 0.2.9, tested with transformers 4.51.3), so this is the only
module that imports its quantizer: replacing it later means replacing this file.

Compatibility notes for AutoAWQ 0.2.9 + transformers 4.51.3 + torch 2.13 on CPU, found by running it:
- Quantizing works on CPU as it is; AutoAWQ moves each decoder layer to CUDA when one is present.
- torch's fp16 matmul on CPU is several times slower than fp32 (6x on the 2-core dev box), and AutoAWQ's
  scale search runs hundreds of layer forwards, so on CPU the model is loaded in fp32 and the tensors left
  unquantized (embeddings, norms, head) are cast back to fp16 before saving. Scales are fp16 either way.
- AutoAWQ defaults to trust_remote_code=True; awqd passes False so that quantizing a directory never runs
  code shipped inside it.
- zero_point=False cannot be packed: WQLinear_GEMM/GEMV.from_linear assert that zeros exist.
- Samples longer than max_calib_seq_len are silently dropped by AutoAWQ, and too little text fails inside
  torch.cat; awqd hands it ready-made token blocks instead (see calibration.py).
"""

import contextlib
import functools
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import structlog
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from awqd.errors import InvalidArgument
from awqd.quant.packing import normalize_version, zeros_width
from awqd.quantize.calibration import DEFAULT_MAX_BLOCKS, DEFAULT_SEQ_LEN, MIN_BLOCKS, calibration_blocks
from awqd.quantize.salience import ChannelSalience, SalienceRecorder

REPORT_FILE = "awqd_quantize_report.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
CLIP_BATCH = 64  # AutoAWQ's clipping search walks output channels in batches of 64 (or 256)

log = structlog.get_logger()


@dataclass
class QuantizeReport:
    out_dir: Path
    w_bit: int
    group_size: int
    zero_point: bool
    version: str  # the checkpoint's packing
    device: str
    seconds: float
    calibration: dict[str, int]  # samples, blocks, seq_len, tokens
    layers: list[str]  # the quantized linear layers
    salience: dict[str, ChannelSalience]  # per quantized layer
    versions: dict[str, str] = field(default_factory=dict)  # autoawq, transformers, torch

    def to_dict(self) -> dict:
        """JSON-ready; out_dir is left out because the report lives inside it (and may be moved with it)."""
        report = asdict(self)
        del report["out_dir"]
        return report


def quantize(
    model_dir: Path,
    calibration: list[str],
    out_dir: Path,
    *,
    w_bit: int = 4,
    group_size: int = 128,
    zero_point: bool = True,
    version: str = "GEMM",
    max_calib_seq_len: int = DEFAULT_SEQ_LEN,
    max_calib_blocks: int = DEFAULT_MAX_BLOCKS,
    n_parallel_calib_samples: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> QuantizeReport:
    """Run AWQ on the fp16 model in `model_dir` and write the checkpoint, its tokenizer and REPORT_FILE to
    `out_dir` (which must not exist or be empty)."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = _read_config(model_dir)
    version = normalize_version(version)
    _check_options(config, w_bit, group_size, zero_point, version)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InvalidArgument("out_dir", f"{out_dir}: exists and is not empty")
    if max_calib_seq_len < 1 or max_calib_blocks < 1:
        raise InvalidArgument("max_calib_seq_len", "max_calib_seq_len and max_calib_blocks must be positive")
    max_positions = getattr(config, "max_position_embeddings", max_calib_seq_len)
    if max_calib_seq_len > max_positions:
        raise InvalidArgument(
            "max_calib_seq_len", f"{max_calib_seq_len} exceeds the model's max_position_embeddings {max_positions}"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise InvalidArgument("model", f"{model_dir}: no usable tokenizer ({error})") from None
    min_blocks = max(MIN_BLOCKS, n_parallel_calib_samples or 0)
    blocks = calibration_blocks(calibration, tokenizer, max_calib_seq_len, max_calib_blocks, min_blocks)

    from awq import AutoAWQForCausalLM  # imported here: slow, and only quantizing needs it

    device = "cuda" if torch.cuda.is_available() else "cpu"
    log.info("quantize.start", model=str(model_dir), version=version, blocks=len(blocks), device=device)
    torch.manual_seed(seed)
    started = time.perf_counter()
    awq_model = AutoAWQForCausalLM.from_pretrained(
        str(model_dir),
        torch_dtype=torch.float16 if device == "cuda" else torch.float32,
        trust_remote_code=False,
        safetensors=any(model_dir.glob("*.safetensors")),
    )
    recorder = SalienceRecorder()
    with _progress_bars(progress):
        awq_model.quantize(
            tokenizer,
            quant_config={"w_bit": w_bit, "q_group_size": group_size, "zero_point": zero_point, "version": version},
            calib_data=blocks,
            max_calib_samples=len(blocks),
            max_calib_seq_len=max_calib_seq_len,
            n_parallel_calib_samples=n_parallel_calib_samples,
            quantizer_cls=_salience_quantizer(recorder),
        )
    awq_model.model.half()
    awq_model.model.config.torch_dtype = torch.float16
    out_dir.mkdir(parents=True, exist_ok=True)
    awq_model.save_quantized(str(out_dir))
    seconds = time.perf_counter() - started

    layers = _quantized_layers(awq_model.model)
    salience = recorder.results()
    for file_name in TOKENIZER_FILES:
        if (model_dir / file_name).is_file():
            shutil.copy2(model_dir / file_name, out_dir / file_name)
    report = QuantizeReport(
        out_dir=out_dir,
        w_bit=w_bit,
        group_size=group_size,
        zero_point=zero_point,
        version=version,
        device=device,
        seconds=round(seconds, 3),
        calibration={
            "samples": len(calibration),
            "blocks": len(blocks),
            "seq_len": max_calib_seq_len,
            "tokens": len(blocks) * max_calib_seq_len,
        },
        layers=layers,
        salience={name: salience[name] for name in layers},
        versions={name: metadata.version(name) for name in ("autoawq", "transformers", "torch")},
    )
    (out_dir / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    log.info("quantize.done", out_dir=str(out_dir), layers=len(layers), seconds=report.seconds)
    return report


def _read_config(model_dir: Path) -> PretrainedConfig:
    if not (model_dir / "config.json").is_file():
        raise InvalidArgument("model", f"{model_dir}: no config.json (expected a Hugging Face model directory)")
    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as error:
        raise InvalidArgument("model", f"{model_dir / 'config.json'}: unreadable ({error})") from None
    if getattr(config, "quantization_config", None):
        raise InvalidArgument("model", f"{model_dir / 'config.json'}: the model is already quantized")
    return config


def _check_options(config: PretrainedConfig, w_bit: int, group_size: int, zero_point: bool, version: str) -> None:
    from awq.models.auto import AWQ_CAUSAL_LM_MODEL_MAP

    if config.model_type not in AWQ_CAUSAL_LM_MODEL_MAP:
        raise InvalidArgument("model", f"AutoAWQ 0.2.9 cannot quantize model_type {config.model_type!r}")
    if w_bit != 4:
        raise InvalidArgument("w_bit", f"awqd serves 4-bit AWQ only, got {w_bit}")
    if not zero_point:
        raise InvalidArgument("zero_point", "AutoAWQ's GEMM and GEMV packings need a zero point")
    if group_size < 8 or group_size % 8 != 0:
        raise InvalidArgument("group_size", f"must be a positive multiple of 8, got {group_size}")
    for name, in_features, out_features in _linear_shapes(config):
        if in_features % group_size != 0:
            raise InvalidArgument("group_size", f"{group_size} does not divide {name}'s in_features {in_features}")
        if out_features % CLIP_BATCH != 0:
            raise InvalidArgument(
                "model", f"{name}'s out_features {out_features} is not a multiple of {CLIP_BATCH}, which AutoAWQ needs"
            )
        if version == "GEMV":
            zeros_width(in_features, group_size)  # raises for group sizes the GEMV packing cannot hold


def _linear_shapes(config: PretrainedConfig) -> list[tuple[str, int, int]]:
    """Every linear layer AWQ quantizes (all but the output head), read from a weightless meta-device model."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    return [
        (name, module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head
    ]


def _salience_quantizer(recorder: SalienceRecorder) -> type:
    """AutoAWQ's quantizer, recording salience while it runs each fp16 decoder layer on the calibration blocks.

    _get_input_feat is the one forward of a still-unquantized layer (the scale search that follows runs
    pseudo-quantized weights), so hooks live only for that call.
    """
    from awq.quantize.quantizer import AwqQuantizer

    class SalienceQuantizer(AwqQuantizer):
        def _get_input_feat(self, layer: nn.Module, named_linears: dict[str, nn.Linear]) -> dict:
            prefix = next(name for name, module in self.model.named_modules() if module is layer)
            with recorder.watch({f"{prefix}.{name}": linear for name, linear in named_linears.items()}):
                return super()._get_input_feat(layer, named_linears)

    return SalienceQuantizer


def _quantized_layers(model: nn.Module) -> list[str]:
    from awq.modules.linear import WQLinear_GEMM, WQLinear_GEMV

    return [name for name, module in model.named_modules() if isinstance(module, (WQLinear_GEMM, WQLinear_GEMV))]


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """AutoAWQ's tqdm bars are its progress display; it offers no switch, so turning them off swaps its tqdm."""
    import awq.quantize.quantizer as quantizer_module

    original = quantizer_module.tqdm
    if not enabled:
        quantizer_module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        quantizer_module.tqdm = original
