"""Daemon settings. Every field is a `awqd serve` flag with an AWQD_* environment equivalent (see awqd/cli.py)."""

import re
from dataclasses import dataclass
from pathlib import Path

from awqd.errors import InvalidArgument

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ModelSpec:
    """One `--model NAME=PATH[@DEVICE]`."""

    name: str
    path: str
    device: str = ""

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        name, sep, rest = text.partition("=")
        if not sep or not rest:
            raise InvalidArgument("--model", f"expected NAME=PATH[@DEVICE], got {text!r}")
        path, _, device = rest.partition("@")
        if not MODEL_NAME.match(name):
            raise InvalidArgument("--model", f"model name {name!r} must be letters, digits, '.', '_' or '-'")
        return cls(name=name, path=path, device=device)


@dataclass(frozen=True)
class ServeConfig:
    listen: str = "0.0.0.0:50051"
    cache_dir: Path = Path("/var/cache/awqd")
    model_root: Path | None = None  # defaults to <cache_dir>/models
    models: tuple[ModelSpec, ...] = ()
    demo_model: bool = True  # serve the embedded demo model when no --model is given
    kernel: str = "auto"
    selection_budget_s: float = 60.0
    single_layout: bool = False
    grace_period_s: float = 30.0
    max_new_tokens_cap: int = 2048
    max_workers: int = 32
    log_level: str = "info"
    log_format: str = "json"

    @property
    def resolved_model_root(self) -> Path:
        return (self.model_root or self.cache_dir / "models").resolve()
