"""Helpers shared by the scale-out tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import socket

from smoke import OVERRIDES, SMOKE

__all__ = ["OVERRIDES", "SMOKE", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
