"""The recipe hash: what a recipe's rows depend on, resolved, and the bytes of the local files it names.

Two recipes that make the same rows hash alike, whatever defaults they spell out: every component's
options are validated and default-filled by the component's own ``Options`` model (nested detectors
and embedders too) before hashing. Execution keys (where, how fast, on which executor) are left out.
Every local file or folder a resolved option names (ONNX models, galleries, reference vectors,
prebuilt banks, image folders, local checkpoints) enters by its sha256, so replacing a model file
changes the hash. What can only be known once a model is loaded (a Hub repo's resolved revision,
default steps) is the generator's ``describe()``, recorded per unit and compared by ``finalize``.

File hashes are cached by (path, size, mtime) in ``$FACESYNTH_CACHE`` (default
``~/.cache/facesynth``), so a large model is read once per machine, not once per run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from facesynth import layout

# Keys that change how a run is executed but not the rows it produces: a resumed run may change them.
EXECUTION_KEYS = (
    ("output", "dir"),
    ("executor",),
    ("generator", "batch_size"),
    ("generator", "device"),
    ("identities", "device"),  # the bank's screens are exact on every device
    ("writer", "encode_processes"),  # the bytes are the same wherever they are encoded
)
# Options of a component that name another component (``{name: ..., <options>}`` or a bare name).
_NESTED = ("detector", "embedder", "sampler")
_CACHE_FILE = "file-sha256.json"
_lock = threading.Lock()
_memory: dict[str, dict[str, Any]] = {}
_dirty: set[str] = set()
CACHE_MIN_BYTES = 1 << 20


def recipe_hash(recipe: Any) -> str:
    """16 hex digits of sha256 over :func:`resolved_recipe`."""
    data = json.dumps(resolved_recipe(recipe), sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def resolved_recipe(recipe: Any) -> dict[str, Any]:
    """The recipe as its rows see it: options default-filled, execution keys out, local files by sha256."""
    from facesynth.filters import FILTERS
    from facesynth.generators import GENERATORS
    from facesynth.identity import VARIATIONS

    data = recipe.to_dict()
    if recipe.generator is not None:
        data["generator"] = resolve_component(GENERATORS, recipe.generator.name, recipe.generator.options)
    data["filters"] = [resolve_component(FILTERS, f.name, f.options) for f in recipe.filters]
    vary = recipe.variations.vary
    data["variations"]["vary"] = resolve_component(VARIATIONS, vary.name, vary.options)
    if recipe.identities is not None:
        data["identities"] = _resolve_nested(
            recipe.identities.model_dump(mode="json"), type(recipe.identities)
        )
    for path in EXECUTION_KEYS:
        node = data
        for key in path[:-1]:
            node = node.get(key) or {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    data["local_files"] = {path: path_sha256(Path(path).expanduser()) for path in sorted(_local_paths(data))}
    return data


def resolve_component(registry: Any, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``{name, **options}`` with every option the component takes, defaults filled, nested ones too."""
    model = registry.options_model(name)
    resolved = model.model_validate(options).model_dump(mode="json")
    return {"name": name, **_resolve_nested(resolved, model)}


def _takes_component(annotation: Any) -> bool:
    """Whether an option declared as ``annotation`` can hold a ``{name: ..., <options>}`` component."""
    if annotation is Any or annotation is dict or typing.get_origin(annotation) is dict:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_takes_component(a) for a in typing.get_args(annotation))


def _resolve_nested(options: dict[str, Any], model: Any) -> dict[str, Any]:
    from facesynth.faces import DETECTORS, EMBEDDERS
    from facesynth.identity import SAMPLERS

    registries = {"detector": DETECTORS, "embedder": EMBEDDERS, "sampler": SAMPLERS}
    for key in _NESTED:
        field = model.model_fields.get(key)
        if field is None or not _takes_component(field.annotation):  # e.g. a generator's `sampler: ddim`
            continue
        spec = options.get(key)
        if isinstance(spec, str):
            spec = {"name": spec}
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            inner = {k: v for k, v in spec.items() if k != "name"}
            options[key] = resolve_component(registries[key], spec["name"], inner)
    return options


def _local_paths(node: Any, key: str = "") -> set[str]:
    """Strings of the resolved recipe that name an existing local file or folder."""
    if isinstance(node, dict):
        return set().union(*(_local_paths(v, k) for k, v in node.items()))
    if isinstance(node, list):
        return set().union(*(_local_paths(v, key) for v in node))
    if isinstance(node, str) and key != "name" and node.strip() and "\n" not in node:
        try:
            if Path(node).expanduser().exists():
                return {node}
        except OSError:  # e.g. a name too long to be a path
            return set()
    return set()


def path_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's visible files (relative names and contents)."""
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path)
        if any(part.startswith(".") for part in relative.parts):  # caches of tools, temporary files
            continue
        digest.update(f"{relative.as_posix()}\0{file_sha256(file, save=False)}\n".encode())
    _save_cache()  # once per folder, not once per file
    return digest.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get("FACESYNTH_CACHE") or Path.home() / ".cache" / "facesynth")


def file_sha256(path: Path, save: bool = True) -> str:
    """sha256 of a file's bytes; files of CACHE_MIN_BYTES and more are read once per (path, size, mtime)."""
    real = Path(path).resolve()
    stat = real.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    cached = (
        stat.st_size >= CACHE_MIN_BYTES
    )  # small files (images of a folder) cost less to read than to cache
    if cached:
        with _lock:
            if not _memory:
                _memory.update(_read_cache())
            known = _memory.get(str(real))
        if known is not None and all(known.get(k) == v for k, v in key.items()):
            return known["sha256"]
    digest = hashlib.sha256()
    with open(real, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    if cached:
        with _lock:
            _memory[str(real)] = {**key, "sha256": digest.hexdigest()}
            _dirty.add(str(real))
        if save:
            _save_cache()
    return digest.hexdigest()


def _save_cache() -> None:
    with _lock:
        if not _dirty:
            return
        with contextlib.suppress(OSError):  # a read-only home: the hash is still right, only not remembered
            layout.atomic_write_json(cache_dir() / _CACHE_FILE, _memory)
        _dirty.clear()


def _read_cache() -> dict[str, dict[str, Any]]:
    try:
        data = layout.read_json(cache_dir() / _CACHE_FILE)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {path: entry for path, entry in data.items() if os.path.exists(path)}  # forget deleted files
