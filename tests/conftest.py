"""Session-wide fixtures: one awqd cache directory and the demo model built into it once per test session."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from awqd.models.demo import ensure_demo_model


@pytest.fixture(scope="session")
def awqd_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory shared by the whole session; a daemon started with it finds the demo model built."""
    return tmp_path_factory.mktemp("awqd-cache")


@pytest.fixture(scope="session")
def demo_model_dir(awqd_cache_dir: Path) -> Path:
    """The demo model, quantized by real AutoAWQ on first use (~15 s on two CPU cores)."""
    return ensure_demo_model(awqd_cache_dir)


@pytest.fixture(scope="session")
def nan_model_dir(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model with one layer's scales set to NaN: its files and shapes are sound, so it loads, but every
    forward pass computes NaN. Warm-up must fail it."""
    broken = tmp_path_factory.mktemp("nan-model") / "nan-scales"
    shutil.copytree(demo_model_dir, broken)
    tensors = load_file(broken / "model.safetensors")
    scales = next(key for key in tensors if key.endswith("mlp.down_proj.scales"))
    tensors[scales] = torch.full_like(tensors[scales], float("nan"))
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    return broken
