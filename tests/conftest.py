"""Session-wide fixtures: one awqd cache directory and the demo model built into it once per test session."""

from pathlib import Path

import pytest

from awqd.models.demo import ensure_demo_model


@pytest.fixture(scope="session")
def awqd_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory shared by the whole session; a daemon started with it finds the demo model built."""
    return tmp_path_factory.mktemp("awqd-cache")


@pytest.fixture(scope="session")
def demo_model_dir(awqd_cache_dir: Path) -> Path:
    """The demo model, quantized by real AutoAWQ on first use (~15 s on two CPU cores)."""
    return ensure_demo_model(awqd_cache_dir)
