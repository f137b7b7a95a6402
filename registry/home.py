"""Where FerrousForge keeps its files: ``$FF_HOME`` (default ``~/.ferrousforge``)."""

from __future__ import annotations

import os
from pathlib import Path


def ff_home() -> Path:
    env = os.environ.get("FF_HOME")
    return Path(env).expanduser() if env else Path.home() / ".ferrousforge"


def store_dir() -> Path:
    return ff_home() / "store"


def cache_dir() -> Path:
    return ff_home() / "cache"
