"""Where generated datasets are cached: ``$NNCF_EXT_DATA`` or ``./data`` (git-ignored, never committed)."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    return Path(os.environ.get("NNCF_EXT_DATA", "data")).resolve()
