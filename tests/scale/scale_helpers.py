"""Helpers shared by the scale-out tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "recipes" / "smoke.yaml"
# 16 identities in 8 units of 2: enough units for two workers, three array tasks and a kill mid-run.
OVERRIDES = ["identities.count=16", "output.identities_per_unit=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
