"""Delivery tests: the registry fixtures of tests/registry, and a signed-model helper set."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "registry"))

from remote_fixtures import auth_registry, docker_config, registry_server

__all__ = ["auth_registry", "docker_config", "registry_server"]
