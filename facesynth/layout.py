"""Where a run keeps its files. Everything under ``units/`` is private until ``finalize``."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

RECIPE = "recipe.yaml"
RUN = "run.json"
BANK = "bank.safetensors"
UNITS = "units"
DATA = "data"
IDENTITIES = "identities.parquet"
REJECTED = "rejected.parquet"
STATS = "stats.json"
CARD = "README.md"


def unit_stem(out: Path, unit: int) -> Path:
    return Path(out) / UNITS / f"unit-{unit:05d}"


def unit_done_marker(out: Path, unit: int) -> Path:
    """Written last, after the unit's files are closed and renamed: its presence means 'done'."""
    return unit_stem(out, unit).with_suffix(".json")


def shard_name(index: int, count: int) -> str:
    return f"{DATA}/train-{index:05d}-of-{count:05d}.parquet"


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path``, unique per host and process (workers may share a filesystem)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def written_by_live_process(tmp: Path, other_hosts_alive: bool) -> bool:
    """Whether the process that named ``tmp`` (see ``temporary_name``) may still be writing it.

    On this host that is known (is its pid running?); a file of another host counts as alive when
    ``other_hosts_alive`` (workers elsewhere may be running).
    """
    host, _, pid = Path(tmp).name.rpartition(".tmp-")[2].rpartition("-")
    if host != socket.gethostname():
        return other_hosts_alive
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # running, as another user
        return True
    return True


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def fsync_dir(path: Path) -> None:
    """Make the renames inside folder ``path`` durable (before a commit that depends on them)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
