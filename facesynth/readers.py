"""One set of readers for face datasets made by any tool, shared by ``filter``, ``report`` and training.

``open_dataset(path)`` recognises:

- parquet: a facesynth output (``data/*.parquet``) or a Hugging Face parquet dataset, columns
  ``image`` (``{"bytes", "path"}`` or raw bytes) and ``label``;
- ImageFolder: ``ROOT/<identity>/<image>``;
- MXNet RecordIO: ``train.rec`` + ``train.idx`` as ``facesynth export --to recordio`` writes them
  and insightface ``arcface_torch`` reads them;
- LMDB as HSFace/VFace ship it (Vec2Face's SOTA-Face-Recognition harness): msgpack
  ``(image_bytes, label)`` under keys ``b"0"``..``b"N-1"``, plus ``__keys__``, ``__len__`` and
  ``__classnum__``; a single file ``NAME.lmdb`` or a folder holding ``data.mdb``.

Every reader gives the same view: ``labels`` (int64, one per image, dense 0..K-1 in the sorted
order of the dataset's own labels), ``identity_names`` (the dataset's own label per class),
``read(i)`` (the encoded image; ``b""`` when the dataset holds none) and ``name(i)``. Images are
read on demand; nothing is written next to the dataset (downloaded datasets may be read-only).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facesynth.errors import UserInputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
FORMATS = ("parquet", "imagefolder", "recordio", "lmdb")


def lmdb_modules() -> tuple[Any, Any]:
    """``(lmdb, msgpack)``, or a one-line error naming the extra that installs them."""
    try:
        import lmdb
        import msgpack
    except ImportError:
        raise UserInputError(
            "LMDB datasets need the lmdb and msgpack packages: pip install 'facesynth[lmdb]'"
        ) from None
    return lmdb, msgpack


def _dense(raw: Sequence[Any]) -> tuple[np.ndarray, list[str]]:
    """Dense labels 0..K-1 in the sorted order of the raw labels (numeric when they all are)."""
    unique = sorted(set(raw), key=lambda v: (0, float(v), "") if _is_number(v) else (1, 0.0, str(v)))
    index = {v: k for k, v in enumerate(unique)}
    labels = np.fromiter((index[v] for v in raw), dtype=np.int64, count=len(raw))
    names = [str(int(v)) if _is_number(v) and float(v).is_integer() else str(v) for v in unique]
    return labels, names


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def open_parquet(path: Path) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` with image and label columns, or a one-line error."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise UserInputError(f"cannot read parquet file {path}: {str(exc).splitlines()[0]}") from None
    missing = {"image", "label"} - set(parquet.schema_arrow.names)
    if missing:
        raise UserInputError(
            f"{path} lacks column(s) {', '.join(sorted(missing))}; expected columns image + label"
        )
    return parquet


class FaceDataset:
    """Images with identity labels, read on demand. Subclasses set the fields and ``read``."""

    format: str
    path: Path
    labels: np.ndarray  # int64 [N], dense 0..K-1
    identity_names: list[str]  # [K] the dataset's own label of each class

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> bytes:
        """The encoded image ``i`` (``b""`` when the dataset holds no bytes for it)."""
        raise NotImplementedError

    def name(self, i: int) -> str:
        """A name for image ``i``, unique within its identity."""
        return str(i)

    def order(self) -> np.ndarray:
        """Image indices in the order cheapest to read them all (storage order)."""
        return np.arange(len(self))

    def identities(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(identity name, image indices)`` per class, in label order; indices in storage order."""
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(len(self.identity_names) + 1))
        for k, name in enumerate(self.identity_names):
            yield name, order[bounds[k] : bounds[k + 1]]

    def close(self) -> None:
        """Release open files (readers also close when garbage-collected)."""


# ----------------------------------------------------------------------------- parquet


def parquet_files(root: Path) -> list[Path]:
    """The data files of a parquet dataset: ``data/*.parquet`` of a facesynth output, else all of them."""
    if root.is_file():
        return [root]
    data = sorted((root / "data").glob("*.parquet"))
    return data or sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))


class ParquetDataset(FaceDataset):
    """``image`` + ``label`` columns over one or more files; image columns cached a few row groups at a time."""

    format = "parquet"
    CACHED_GROUPS = 4

    def __init__(self, path: Path, files: list[Path]) -> None:

        self.path = path
        self._files: list[Any] = []
        raw_labels: list[Any] = []
        self._names: list[str] = []
        self._where: list[tuple[int, int, int]] = []  # (file, row group, row in group) per image
        for f, file in enumerate(files):
            parquet = open_parquet(file)
            self._files.append(parquet)
            image_type = parquet.schema_arrow.field("image").type
            has_path = hasattr(image_type, "get_field_index") and image_type.get_field_index("path") >= 0
            row = 0
            for g in range(parquet.num_row_groups):
                # Only the labels and file names: image bytes are read when asked for.
                table = parquet.read_row_group(g, columns=["label"] + (["image.path"] if has_path else []))
                paths = (
                    table.column("image").combine_chunks().field("path").to_pylist()
                    if has_path
                    else [None] * table.num_rows
                )
                raw_labels += table.column("label").to_pylist()
                for r, p in enumerate(paths):
                    self._names.append(str(p) if p else f"{file.stem}-{row + r:06d}")
                    self._where.append((f, g, r))
                row += table.num_rows
        self.labels, self.identity_names = _dense(raw_labels)
        self._cache: OrderedDict[tuple[int, int], list[Any]] = OrderedDict()

    def _group(self, f: int, g: int) -> list[Any]:
        key = (f, g)
        if key not in self._cache:
            self._cache[key] = self._files[f].read_row_group(g, columns=["image"]).column("image").to_pylist()
            while len(self._cache) > self.CACHED_GROUPS:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]

    def read(self, i: int) -> bytes:
        f, g, r = self._where[i]
        cell = self._group(f, g)[r]
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        return data if isinstance(data, bytes) else b""

    def name(self, i: int) -> str:
        return self._names[i]


# ----------------------------------------------------------------------------- image folder


class ImageFolderDataset(FaceDataset):
    """``ROOT/<identity>/<image>``: one class per subfolder holding images (sorted names)."""

    format = "imagefolder"

    def __init__(self, root: Path) -> None:
        self.path = root
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise UserInputError(f"{root} has no identity subfolders; expected {root}/<identity>/<image>.jpg")
        self._files: list[Path] = []
        labels: list[int] = []
        self.identity_names = []
        for folder in folders:
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if files:
                labels += [len(self.identity_names)] * len(files)
                self.identity_names.append(folder.name)
                self._files += files
        self.labels = np.asarray(labels, dtype=np.int64)

    def read(self, i: int) -> bytes:
        try:
            return self._files[i].read_bytes()
        except OSError:
            return b""

    def name(self, i: int) -> str:
        return self._files[i].name


# ----------------------------------------------------------------------------- RecordIO

RECORDIO_MAGIC = 0xCED7230A
_IR_HEADER = struct.Struct("<IfQQ")  # MXNet IRHeader: flag, label, id, id2
_LREC_MASK = (1 << 29) - 1


class RecordIODataset(FaceDataset):
    """MXNet indexed RecordIO: ``train.idx`` (``key<TAB>offset``) + ``train.rec``.

    When record 0 has a vector label (insightface's header), images are keys ``1..label[0]-1``;
    otherwise every indexed record is an image. A vector label on an image record means its first
    float is the class, as ``arcface_torch`` reads it.
    """

    format = "recordio"

    def __init__(self, rec: Path) -> None:
        idx = rec.with_suffix(".idx")
        self.path = rec.parent
        if not idx.is_file():
            raise UserInputError(f"{rec} has no index {idx.name} beside it; RecordIO needs both files")
        offsets: dict[int, int] = {}
        for line in idx.read_text().splitlines():
            if line.strip():
                key, offset = line.split("\t")
                offsets[int(key)] = int(offset)
        self._rec = open(rec, "rb")  # noqa: SIM115 - closed in close()
        keys = sorted(offsets)
        if keys and keys[0] == 0:
            flag, label, vector = self._header(offsets[0])
            if flag > 0:
                keys = [k for k in keys if 1 <= k < int(vector[0])]
        self._offsets = [offsets[k] for k in keys]
        self._keys = keys
        raw = []
        for offset in self._offsets:
            flag, label, vector = self._header(offset)
            raw.append(int(vector[0]) if flag > 0 else int(label))
        self.labels, self.identity_names = _dense(raw)

    def _record(self, offset: int) -> bytes:
        """The payload at ``offset``, its parts (cflag 1, 2.., 3) rejoined with the magic word."""
        magic = struct.pack("<I", RECORDIO_MAGIC)
        self._rec.seek(offset)
        parts = []
        while True:
            head = self._rec.read(8)
            if len(head) < 8 or struct.unpack("<I", head[:4])[0] != RECORDIO_MAGIC:
                raise UserInputError(f"{self.path}/train.rec is corrupt at byte {offset}: no record there")
            lrec = struct.unpack("<I", head[4:])[0]
            cflag, length = lrec >> 29, lrec & _LREC_MASK
            parts.append(self._rec.read(length))
            self._rec.seek(-length % 4, 1)
            if cflag in (0, 3):
                return magic.join(parts)

    def _header(self, offset: int) -> tuple[int, float, list[float]]:
        payload = self._record(offset)
        flag, label, _, _ = _IR_HEADER.unpack_from(payload)
        vector = list(struct.unpack_from(f"<{flag}f", payload, _IR_HEADER.size)) if flag > 0 else [label]
        return flag, label, vector

    def read(self, i: int) -> bytes:
        payload = self._record(self._offsets[i])
        flag = _IR_HEADER.unpack_from(payload)[0]
        return payload[_IR_HEADER.size + 4 * flag :]

    def name(self, i: int) -> str:
        return str(self._keys[i])

    def close(self) -> None:
        self._rec.close()


# ----------------------------------------------------------------------------- LMDB


def _msgpack_label(value: memoryview | bytes, msgpack: Any) -> Any:
    """The label of a msgpack ``(image_bytes, label)`` value without copying the image."""
    view = memoryview(value)
    head = view[0]
    if 0x90 <= head <= 0x9F:  # fixarray
        pos = 1
    elif head == 0xDC:
        pos = 3
    else:
        return msgpack.unpackb(bytes(view), raw=False)[1]
    kind = view[pos]
    if kind in (0xC4, 0xD9):  # bin8 / str8
        size, pos = view[pos + 1], pos + 2
    elif kind in (0xC5, 0xDA):  # bin16 / str16
        size, pos = struct.unpack(">H", view[pos + 1 : pos + 3])[0], pos + 3
    elif kind in (0xC6, 0xDB):  # bin32 / str32
        size, pos = struct.unpack(">I", view[pos + 1 : pos + 5])[0], pos + 5
    else:
        return msgpack.unpackb(bytes(view), raw=False)[1]
    return msgpack.unpackb(bytes(view[pos + size :]), raw=False)


class LMDBDataset(FaceDataset):
    """The LMDB layout of HSFace/VFace: msgpack ``(image_bytes, label)`` values, ``__keys__`` in order."""

    format = "lmdb"

    def __init__(self, path: Path) -> None:
        lmdb, msgpack = lmdb_modules()
        self.path = path
        self._msgpack = msgpack
        try:
            self._env = lmdb.open(
                str(path), subdir=path.is_dir(), readonly=True, lock=False, readahead=False, meminit=False
            )
        except lmdb.Error as exc:
            raise UserInputError(f"cannot open LMDB {path}: {str(exc).splitlines()[0]}") from None
        with self._env.begin(buffers=True) as txn:
            keys = txn.get(b"__keys__")
            if keys is None:
                raise UserInputError(f"LMDB {path} has no __keys__ entry; expected the HSFace/VFace layout")
            self._keys = [bytes(k) for k in msgpack.unpackb(bytes(keys), raw=False)]
            raw = []
            for key in self._keys:
                value = txn.get(key)
                if value is None:
                    raise UserInputError(f"LMDB {path} lists key {key!r} in __keys__ but holds no value")
                raw.append(_msgpack_label(value, msgpack))
        self.labels, self.identity_names = _dense(raw)

    def read(self, i: int) -> bytes:
        with self._env.begin() as txn:
            image = self._msgpack.unpackb(txn.get(self._keys[i]), raw=False)[0]
        return image if isinstance(image, bytes) else b""

    def name(self, i: int) -> str:
        return self._keys[i].decode("ascii", "replace")

    def close(self) -> None:
        self._env.close()


def _is_lmdb_file(path: Path) -> bool:
    return path.suffix == ".lmdb" or (path.name.endswith(".mdb") and not path.name.startswith("lock"))


# ----------------------------------------------------------------------------- dispatch


def detect_format(path: Path) -> str:
    """Which reader fits ``path``: one of ``FORMATS``."""
    if path.is_file():
        if path.suffix == ".parquet":
            return "parquet"
        if path.suffix in (".rec", ".idx"):
            return "recordio"
        if _is_lmdb_file(path):
            return "lmdb"
    elif path.is_dir():
        if (path / "data.mdb").is_file():
            return "lmdb"
        if (path / "train.rec").is_file():
            return "recordio"
        if parquet_files(path):
            return "parquet"
        return "imagefolder"
    raise UserInputError(
        f"cannot read {path}: expected a parquet dataset, an image folder, train.rec + train.idx or an LMDB"
    )


def open_dataset(path: str | Path) -> FaceDataset:
    """Open the dataset at ``path`` with the reader its layout calls for; errors are one line."""
    root = Path(path).expanduser()
    if not root.exists():
        raise UserInputError(
            f"input {root} does not exist; give an image folder, a parquet dataset, RecordIO or LMDB"
        )
    kind = detect_format(root)
    if kind == "parquet":
        dataset: FaceDataset = ParquetDataset(root, parquet_files(root))
    elif kind == "recordio":
        dataset = RecordIODataset(root.with_suffix(".rec") if root.is_file() else root / "train.rec")
    elif kind == "lmdb":
        dataset = LMDBDataset(root.parent if root.name == "data.mdb" else root)
    else:
        dataset = ImageFolderDataset(root)
    return dataset
