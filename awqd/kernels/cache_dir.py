"""Where kernel libraries keep what they learn per node (gemlite's autotuned configs), under the daemon's --cache-dir.

The daemon exports its cache directory as AWQD_CACHE_DIR at boot (the variable the CLI already reads for
--cache-dir), so a candidate finds it in the daemon and in any child process it starts, without a parameter
threaded through selection. Unset (a script, a test), nothing is kept across processes.
"""

import os
from pathlib import Path

CACHE_DIR_ENV = "AWQD_CACHE_DIR"


def export_cache_dir(cache_dir: Path) -> None:
    os.environ[CACHE_DIR_ENV] = str(cache_dir)


def kernel_cache_dir(library: str) -> Path | None:
    """`<cache dir>/<library>`, created; None when no cache directory is set or it cannot be written."""
    root = os.environ.get(CACHE_DIR_ENV)
    if not root:
        return None
    directory = Path(root) / library
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return directory
