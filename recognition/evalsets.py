"""Face verification eval sets: insightface ``.bin`` files, pairs lists, and Hugging Face datasets.

The API::

    load_eval_set(path, name=None) -> EvalSet     # .bin, pairs list (.txt/.csv/.lst) or HF dataset
    load_eval_sets(paths) -> list[EvalSet]        # several, names checked distinct
    EvalSet.image(i) -> np.ndarray                # image i (of 2N) as insightface feeds it: RGB uint8 HxWx3
    EvalSet.decoded() -> EvalSet                  # every image decoded once (uint8 [2N,112,112,3]), to reuse

Pair k is images 2k and 2k+1; ``issame[k]`` says whether they show the same person.

- ``.bin`` (LFW, CFP-FP, CPLFW, AgeDB-30, CALFW as insightface ships them): a pickle of
  ``(images, issame)``: 2N encoded images (``bytes``, or 1-D uint8 numpy arrays from ``cv2.imencode``)
  and N booleans. Pickles can run code, so they are read with a restricted unpickler that admits only
  the globals such files hold (numpy's array and dtype reconstruction, ``_codecs.encode``) and refuses
  anything else before it runs. Old (Python 2) files need ``encoding="bytes"``: tried, as insightface
  does, when the default decoding fails.
- pairs list: one pair per line, ``path1 path2 0|1`` (insightface's ``pairs_label.txt``), paths relative
  to the list's folder; blank lines and ``#`` comments skipped.
- Hugging Face dataset (a ``save_to_disk`` folder, a parquet file or a folder of parquet files):
  one row per image with columns ``image`` and ``is_same`` (optionally ``index``, the file order), pairs
  being consecutive rows as in a ``.bin`` (CVLFace's eval sets); or one row per pair with
  ``image1``, ``image2`` and ``is_same``.

Decoding follows insightface's ``load_bin``: OpenCV decode to RGB; when the width is not 112 the short
side is resized to 112 (bicubic, like ``mx.image.resize_short``).
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesynth.errors import UserInputError

IMAGE_SIZE = 112
PAIRS_LIST_SUFFIXES = (".txt", ".csv", ".lst")


def _numpy_reconstructors() -> dict[tuple[str, str], Any]:
    """The numpy callables array pickles name, under the module paths of numpy 1.x and 2.x."""
    reconstruct = np.ndarray((0,), np.uint8).__reduce__()[0]  # multiarray._reconstruct
    frombuffer = np.zeros(1, np.uint8).__reduce_ex__(5)[0]  # numeric._frombuffer (protocol 5)
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _Refused(pickle.UnpicklingError):
    """A global the eval-file unpickler does not admit (the message names it)."""


class _EvalBinUnpickler(pickle.Unpickler):
    """Admits only what insightface eval .bin files hold; any other global is refused before it runs."""

    ALLOWED = {**_numpy_reconstructors(), ("_codecs", "encode"): __import__("codecs").encode}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("a persistent id")


def _unpickle(data: bytes, path: Path) -> Any:
    def load(**kwargs: Any) -> Any:
        return _EvalBinUnpickler(io.BytesIO(data), **kwargs).load()

    try:
        try:
            return load()
        except UnicodeDecodeError:  # a Python 2 pickle of byte strings: insightface retries the same way
            return load(encoding="bytes")
    except _Refused as exc:
        raise UserInputError(
            f"{path} is not an insightface eval .bin: it asks to load {exc} (only bytes, uint8 numpy arrays "
            "and booleans are allowed); refusing to load it"
        ) from None
    except Exception as exc:  # truncated or garbled pickles raise many unrelated types
        raise UserInputError(
            f"{path} is not a readable eval .bin ({exc.__class__.__name__}: {exc})"
        ) from None


@dataclass(frozen=True)
class EvalSet:
    """2N images (pair k = images 2k, 2k+1) and N same/different flags.

    ``images`` are encoded (bytes, 1-D uint8 arrays of a JPEG/PNG, file paths), decoded on use; or, after
    ``decoded()``, one uint8 array [2N, 112, 112, 3] ready to embed (for repeated evaluations, e.g.
    validation during training: LFW's 12,000 images take 450 MB).
    """

    name: str
    images: Sequence[Any]
    issame: np.ndarray  # [N] bool

    def __post_init__(self) -> None:
        if len(self.images) != 2 * len(self.issame):
            raise UserInputError(
                f"eval set {self.name}: {len(self.images)} images for {len(self.issame)} pairs (need 2 per pair)"
            )

    @property
    def pairs(self) -> int:
        return len(self.issame)

    def image(self, i: int) -> np.ndarray:
        """Image i decoded as insightface's ``load_bin`` does: RGB uint8 [112, 112, 3]."""
        if isinstance(self.images, np.ndarray):
            return self.images[i]
        return prepare_image(decode_image(self.images[i], f"{self.name} image {i}"), f"{self.name} image {i}")

    def batch(self, start: int, stop: int) -> np.ndarray:
        """Images start..stop-1 as uint8 [B, 112, 112, 3], decoded on a few threads (OpenCV releases the GIL)."""
        if isinstance(self.images, np.ndarray):
            return self.images[start:stop]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            return np.stack(list(pool.map(self.image, range(start, stop))))

    def decoded(self) -> EvalSet:
        """The same eval set with every image decoded once, to embed many times."""
        if isinstance(self.images, np.ndarray):
            return self
        return EvalSet(self.name, self.batch(0, len(self.images)), self.issame)


def decode_image(item: Any, what: str) -> np.ndarray:
    """Encoded bytes / uint8 array / file path -> RGB uint8 HxWx3 (OpenCV's decoder, as mx.image.imdecode)."""
    import cv2

    if isinstance(item, str | Path):
        try:
            item = Path(item).read_bytes()
        except OSError as exc:
            raise UserInputError(f"{what}: cannot read {item} ({exc.strerror})") from None
    buffer = (
        np.frombuffer(item, np.uint8) if isinstance(item, bytes | bytearray) else np.asarray(item).reshape(-1)
    )
    bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if bgr is None:
        raise UserInputError(f"{what} is not a decodable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def prepare_image(rgb: np.ndarray, what: str = "image") -> np.ndarray:
    """If the width is not 112, resize the short side to 112 (bicubic), as insightface; must end 112x112."""
    import cv2

    h, w = rgb.shape[:2]
    if w != IMAGE_SIZE:
        new_h, new_w = (IMAGE_SIZE * h // w, IMAGE_SIZE) if h > w else (IMAGE_SIZE, IMAGE_SIZE * w // h)
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    if rgb.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        raise UserInputError(
            f"{what} is {h}x{w}: eval images must be aligned square face crops (112x112, or square to resize)"
        )
    return rgb


def load_bin(path: str | Path, name: str | None = None) -> EvalSet:
    """An insightface eval ``.bin`` (restricted unpickling; see the module docstring)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserInputError(f"cannot read eval set {path} ({exc.strerror})") from None
    content = _unpickle(data, path)
    if not (isinstance(content, tuple | list) and len(content) == 2):
        raise UserInputError(f"{path}: an eval .bin holds (images, issame), found {type(content).__name__}")
    images, issame = content
    if not isinstance(images, list | tuple) or not all(_is_encoded_image(b) for b in images):
        raise UserInputError(f"{path}: the images must be a list of encoded images (bytes or uint8 arrays)")
    flags = np.asarray(issame)
    if flags.ndim != 1 or not (flags.dtype == bool or np.isin(flags, (0, 1)).all()):
        raise UserInputError(f"{path}: issame must be a list of booleans")
    return EvalSet(name or path.stem, list(images), flags.astype(bool))


def _is_encoded_image(item: Any) -> bool:
    if isinstance(item, bytes | bytearray):
        return True
    # cv2.imencode returns [M] (OpenCV >= 4.5) or [M, 1] uint8 arrays
    return (
        isinstance(item, np.ndarray)
        and item.dtype == np.uint8
        and (item.ndim == 1 or (item.ndim == 2 and item.shape[1] == 1))
    )


def load_pairs_list(path: str | Path, name: str | None = None) -> EvalSet:
    """``path1 path2 0|1`` per line; paths relative to the list's folder."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"cannot read pairs list {path} ({exc})") from None
    images: list[Path] = []
    issame: list[bool] = []
    for number, line in enumerate(lines, start=1):
        fields = line.replace(",", " ").split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 3 or fields[2] not in ("0", "1"):
            raise UserInputError(f"{path}:{number}: expected 'path1 path2 0|1', got {line.strip()!r}")
        images += [path.parent / fields[0], path.parent / fields[1]]
        issame.append(fields[2] == "1")
    missing = [p for p in images if not p.is_file()]
    if missing:
        raise UserInputError(f"{path}: {len(missing)} image(s) not found, first {missing[0]}")
    return EvalSet(name or path.stem, [str(p) for p in images], np.array(issame, dtype=bool))


def _image_bytes(value: Any) -> Any:
    """A datasets ``Image(decode=False)`` value ({'bytes', 'path'}) -> bytes or a path."""
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    return value


def load_hf_dataset(path: str | Path, name: str | None = None) -> EvalSet:
    """A Hugging Face dataset on disk (see the module docstring for the columns)."""
    import datasets

    path = Path(path)
    try:
        if path.is_dir() and (path / "dataset_info.json").exists() and (path / "state.json").exists():
            ds = datasets.load_from_disk(str(path))
        else:
            files = [str(path)] if path.is_file() else sorted(str(p) for p in path.rglob("*.parquet"))
            if not files:
                raise UserInputError(f"{path}: no parquet files and not a save_to_disk dataset")
            ds = datasets.load_dataset("parquet", data_files=files, split="train")
    except UserInputError:
        raise
    except Exception as exc:
        raise UserInputError(f"cannot read eval dataset {path} ({exc.__class__.__name__}: {exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise UserInputError(f"{path} holds splits {sorted(ds)}; point at one split's folder")
        ds = next(iter(ds.values()))
    columns = set(ds.column_names)
    label = next((c for c in ("is_same", "issame") if c in columns), None)
    if label is None:
        raise UserInputError(f"{path}: no is_same column (columns: {sorted(columns)})")
    for column in columns & {"image", "image1", "image2"}:
        if isinstance(ds.features[column], datasets.Image):
            ds = ds.cast_column(column, datasets.Image(decode=False))
    name = name or path.stem
    if {"image1", "image2"} <= columns:
        images = [_image_bytes(v) for pair in zip(ds["image1"], ds["image2"], strict=True) for v in pair]
        return EvalSet(name, images, np.asarray(ds[label], dtype=bool))
    if "image" not in columns:
        raise UserInputError(f"{path}: needs columns image + is_same, or image1 + image2 + is_same")
    order = np.argsort(np.asarray(ds["index"]), kind="stable") if "index" in columns else np.arange(len(ds))
    images = [_image_bytes(v) for v in ds["image"]]
    flags = np.asarray(ds[label], dtype=bool)[order]
    if len(flags) % 2 or (flags[0::2] != flags[1::2]).any():
        raise UserInputError(f"{path}: rows 2k and 2k+1 form pair k and must carry the same is_same")
    return EvalSet(name, [images[i] for i in order], flags[0::2])


def load_eval_set(path: str | Path, name: str | None = None) -> EvalSet:
    """Load an eval set by its form: ``.bin``, a pairs list, or a Hugging Face dataset on disk."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(
            f"eval set {path} not found (the five .bin files: see docs/recognition.md#where-to-get-the-eval-sets)"
        )
    if path.suffix == ".bin":
        return load_bin(path, name)
    if path.suffix in PAIRS_LIST_SUFFIXES:
        return load_pairs_list(path, name)
    if path.is_dir() or path.suffix == ".parquet":
        return load_hf_dataset(path, name)
    raise UserInputError(
        f"{path}: unknown eval set form; give a .bin, a pairs list ({'/'.join(PAIRS_LIST_SUFFIXES)}) "
        "or a Hugging Face dataset folder"
    )


def load_eval_sets(paths: Sequence[str | Path]) -> list[EvalSet]:
    """Load several eval sets (results are keyed by name, so names must differ)."""
    evalsets = [load_eval_set(path) for path in paths]
    names = [s.name for s in evalsets]
    if len(set(names)) != len(names):
        raise UserInputError(f"two eval sets share a name ({', '.join(names)}); rename one of the files")
    return evalsets
