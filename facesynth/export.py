"""Export a finished dataset for trainers that do not read parquet: ImageFolder, RecordIO, WebDataset, LMDB.

Rows are streamed from ``data/*.parquet`` one row group at a time; nothing holds the dataset in
memory. RecordIO and WebDataset are read sequentially by their loaders, so their records are
shuffled first (identities interleaved) with a bounded-memory two-pass shuffle seeded by the
recipe seed: pass one scatters rows into temporary bucket files at random, pass two shuffles each
bucket in memory. The export is written into a hidden sibling folder and renamed into place at
the end, so an interrupted export never looks finished.

Writers share one small interface: ``write(sample)`` then ``close() -> summary``.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import struct
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from facesynth import layout
from facesynth.errors import UserInputError

FORMATS = ("imagefolder", "recordio", "webdataset", "lmdb")
_SHUFFLE_SALT = 0x5F1E


@dataclass
class Sample:
    """One dataset row, as the exporters need it."""

    image: bytes
    ext: str  # file extension of the encoded image, without the dot
    label: int
    identity: int
    attempt: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.identity:07d}_{self.attempt:04d}"


class ExportWriter(Protocol):
    def write(self, sample: Sample) -> None: ...

    def close(self) -> dict[str, Any]: ...


# ----------------------------------------------------------------------------- reading


def iter_samples(out: Path) -> Iterator[Sample]:
    """Every row of ``out/data``, in storage order, one row group in memory at a time."""
    for path in sorted((Path(out) / layout.DATA).glob("*.parquet")):
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=["image", "label", "identity", "attempt", "seed"])
            for row in table.to_pylist():
                yield Sample(
                    image=row["image"]["bytes"],
                    ext=Path(row["image"]["path"] or "x.jpg").suffix.lstrip(".") or "jpg",
                    label=row["label"],
                    identity=row["identity"],
                    attempt=row["attempt"],
                    seed=row["seed"],
                )


_BUCKET_HEADER = struct.Struct("<iqiqB I")  # label, identity, attempt, seed, ext length, image length


def _write_bucket_record(f: BinaryIO, s: Sample) -> None:
    ext = s.ext.encode()
    f.write(_BUCKET_HEADER.pack(s.label, s.identity, s.attempt, s.seed, len(ext), len(s.image)))
    f.write(ext)
    f.write(s.image)


def _read_bucket(path: Path) -> list[Sample]:
    data, samples, pos = path.read_bytes(), [], 0
    while pos < len(data):
        label, identity, attempt, seed, n_ext, n_image = _BUCKET_HEADER.unpack_from(data, pos)
        pos += _BUCKET_HEADER.size
        ext = data[pos : pos + n_ext].decode()
        pos += n_ext
        samples.append(Sample(data[pos : pos + n_image], ext, label, identity, attempt, seed))
        pos += n_image
    return samples


def shuffled(samples: Iterable[Sample], seed: int, workdir: Path, num_buckets: int) -> Iterator[Sample]:
    """The samples in a random order fixed by ``seed``, holding one bucket in memory at a time."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = [workdir / f"bucket-{b:05d}.bin" for b in range(num_buckets)]
    rng = np.random.default_rng([seed, _SHUFFLE_SALT])
    files = [open(p, "wb") for p in paths]  # noqa: SIM115 - closed below, all at once
    try:
        for sample in samples:
            _write_bucket_record(files[int(rng.integers(num_buckets))], sample)
    finally:
        for f in files:
            f.close()
    for b, path in enumerate(paths):
        bucket = _read_bucket(path)
        path.unlink()
        order = np.random.default_rng([seed, _SHUFFLE_SALT, b]).permutation(len(bucket))
        for i in order:
            yield bucket[i]
    shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------------------- writers


class ImageFolderWriter:
    """``DEST/<label>/<identity>_<attempt>.<ext>``: torchvision ``ImageFolder`` and ``datasets`` "imagefolder".

    Label folders are zero-padded to one width, so their sorted order (how both loaders number
    classes) is the label order: class index == label.
    """

    def __init__(self, dest: Path, num_labels: int) -> None:
        self.dest = dest
        self.width = len(str(max(num_labels - 1, 0)))
        self.made: set[int] = set()
        self.count = 0

    def write(self, sample: Sample) -> None:
        folder = self.dest / f"{sample.label:0{self.width}d}"
        if sample.label not in self.made:
            folder.mkdir(parents=True, exist_ok=True)
            self.made.add(sample.label)
        (folder / f"{sample.key}.{sample.ext}").write_bytes(sample.image)
        self.count += 1

    def close(self) -> dict[str, Any]:
        return {"images": self.count, "labels": len(self.made)}


RECORDIO_MAGIC = 0xCED7230A
_IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2: MXNet's IRHeader
_LREC_MASK = (1 << 29) - 1


def pack_record(label: float | list[float], record_id: int, image: bytes) -> bytes:
    """An MXNet ``recordio.pack`` payload: IRHeader, then (for a vector label) the floats, then the image."""
    if isinstance(label, list):
        vector = np.asarray(label, dtype="<f4").tobytes()
        return _IR_HEADER.pack(len(label), 0.0, record_id, 0) + vector + image
    return _IR_HEADER.pack(0, float(label), record_id, 0) + image


def frame_record(payload: bytes) -> bytes:
    """One dmlc RecordIO record: ``magic, (cflag << 29 | length), data, zero padding to 4 bytes``.

    Like dmlc's writer, a payload that holds the magic word at a 4-byte aligned offset is split
    there into parts (cflag 1 = first, 2 = middle, 3 = last); the reader rejoins the parts with the
    magic word. Without this a sequential reader would resynchronise on the wrong boundary.
    """
    magic = struct.pack("<I", RECORDIO_MAGIC)
    parts, start = [], 0
    i = payload.find(magic)
    while i != -1:
        if i % 4 == 0:
            parts.append(payload[start:i])
            start = i + 4
        i = payload.find(magic, i + 1)
    parts.append(payload[start:])
    out = bytearray()
    for n, part in enumerate(parts):
        cflag = 0 if len(parts) == 1 else 1 if n == 0 else 3 if n == len(parts) - 1 else 2
        out += magic + struct.pack("<I", (cflag << 29) | len(part)) + part
    out += b"\0" * (-len(payload) % 4)
    return bytes(out)


class RecordIOWriter:
    """``train.rec`` + ``train.idx`` + ``property`` as insightface's ``arcface_torch`` reads them.

    Record 0 is the header; its vector label ``[N + 1, N + 1]`` says images are records 1..N
    (``arcface_torch`` reads ``label[0]``); no per-identity range records follow, as records are
    shuffled. Image record ``k`` has the float label, ``id = k`` and the encoded image bytes.
    ``property`` is ``num_classes,height,width``.
    """

    def __init__(self, dest: Path, num_images: int, num_labels: int) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        self.dest = dest
        self.num_labels = num_labels
        self.rec = open(dest / "train.rec", "wb")  # noqa: SIM115 - closed in close()
        self.idx = open(dest / "train.idx", "w")  # noqa: SIM115
        self.key = 0
        self.size: tuple[int, int] | None = None
        self._append(pack_record([float(num_images + 1), float(num_images + 1)], 0, b""))
        self.expected = num_images

    def _append(self, payload: bytes) -> None:
        self.idx.write(f"{self.key}\t{self.rec.tell()}\n")
        self.rec.write(frame_record(payload))
        self.key += 1

    def write(self, sample: Sample) -> None:
        if self.size is None:
            from PIL import Image

            self.size = Image.open(io.BytesIO(sample.image)).size
        self._append(pack_record(float(sample.label), self.key, sample.image))

    def close(self) -> dict[str, Any]:
        self.rec.close()
        self.idx.close()
        width, height = self.size or (0, 0)
        (self.dest / "property").write_text(f"{self.num_labels},{height},{width}\n")
        if self.key - 1 != self.expected:
            raise UserInputError(f"wrote {self.key - 1} records but the dataset has {self.expected} rows")
        return {"images": self.key - 1, "labels": self.num_labels, "image_size": [height, width]}


class WebDatasetWriter:
    """Tar shards ``train-00000.tar``: per sample ``KEY.<ext>`` (image), ``KEY.cls`` (label), ``KEY.json``.

    Members carry fixed owners and times, so the same dataset always gives the same bytes.
    """

    def __init__(self, dest: Path, shard_bytes: int) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        self.dest = dest
        self.shard_bytes = shard_bytes
        self.tar: tarfile.TarFile | None = None
        self.shards = 0
        self.bytes = 0
        self.count = 0

    def _add(self, name: str, data: bytes) -> None:
        assert self.tar is not None
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        self.tar.addfile(info, io.BytesIO(data))
        self.bytes += len(data) + 1024  # + header and padding, roughly

    def write(self, sample: Sample) -> None:
        if self.tar is None or self.bytes >= self.shard_bytes:
            self._next_shard()
        meta = {
            "label": sample.label,
            "identity": sample.identity,
            "attempt": sample.attempt,
            "seed": sample.seed,
        }
        self._add(f"{sample.key}.{sample.ext}", sample.image)
        self._add(f"{sample.key}.cls", str(sample.label).encode())
        self._add(f"{sample.key}.json", json.dumps(meta, sort_keys=True).encode())
        self.count += 1

    def _next_shard(self) -> None:
        if self.tar is not None:
            self.tar.close()
        path = self.dest / f"train-{self.shards:05d}.tar"
        self.tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - closed later
        self.shards += 1
        self.bytes = 0

    def close(self) -> dict[str, Any]:
        if self.tar is not None:
            self.tar.close()
        return {"images": self.count, "shards": self.shards}


class LMDBWriter:
    """The LMDB of Vec2Face's harness (HSFace/VFace): msgpack ``(image_bytes, label)`` under ``b"0"``..``b"N-1"``.

    Then ``__keys__`` (msgpack list of the keys), ``__len__`` and ``__classnum__``. ``dest`` is an
    LMDB environment folder (``data.mdb``); the harness opens it when its path ends in ``.lmdb``.
    Rows keep storage order: the harness's sampler shuffles.
    """

    COMMIT_EVERY = 5000

    def __init__(self, dest: Path, num_labels: int, data_bytes: int) -> None:
        from facesynth.readers import lmdb_modules

        lmdb, self.msgpack = lmdb_modules()
        dest.mkdir(parents=True, exist_ok=True)
        # map_size only reserves address space; the file grows with what is written.
        self.env = lmdb.open(str(dest), subdir=True, map_size=max(1 << 30, 2 * data_bytes + (64 << 20)))
        self.txn = self.env.begin(write=True)
        self.num_labels = num_labels
        self.count = 0

    def write(self, sample: Sample) -> None:
        key = str(self.count).encode("ascii")
        self.txn.put(key, self.msgpack.packb((sample.image, int(sample.label)), use_bin_type=True))
        self.count += 1
        if self.count % self.COMMIT_EVERY == 0:
            self.txn.commit()
            self.txn = self.env.begin(write=True)

    def close(self) -> dict[str, Any]:
        keys = [str(k).encode("ascii") for k in range(self.count)]
        self.txn.put(b"__keys__", self.msgpack.packb(keys, use_bin_type=True))
        self.txn.put(b"__len__", self.msgpack.packb(len(keys)))
        self.txn.put(b"__classnum__", self.msgpack.packb(self.num_labels))
        self.txn.commit()
        self.env.sync()
        self.env.close()
        return {"images": self.count, "labels": self.num_labels}


# ----------------------------------------------------------------------------- export


def export(
    out: str | Path,
    to: str,
    dest: str | Path,
    overwrite: bool = False,
    shard_size_mb: float = 500,
    bucket_mb: float = 256,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the finished dataset ``out`` to ``dest`` in format ``to``; returns a summary."""
    from facesynth.finalize import is_finalized
    from facesynth.recipe import load_recipe

    out, dest = Path(out).resolve(), Path(dest).resolve()
    if to not in FORMATS:
        raise UserInputError(f"unknown export format '{to}'; choose one of {', '.join(FORMATS)}")
    if not is_finalized(out):
        raise UserInputError(
            f"{out} is not a finished dataset (no {layout.STATS}); finish it with `facesynth run`"
        )
    if dest == out or out in dest.parents or dest in out.parents:
        raise UserInputError(f"export to a folder that neither holds nor is inside the dataset {out}")
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise UserInputError(
            f"{dest} exists and is not empty; choose another destination or pass --overwrite"
        )
    stats = layout.read_json(out / layout.STATS)
    seed = load_recipe(out / layout.RECIPE).seed
    num_images, num_labels = stats["images_kept"], stats["identities_kept"]

    partial = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted export
    partial.mkdir(parents=True)
    samples: Iterable[Sample] = iter_samples(out)
    data_bytes = sum(s["bytes"] for s in stats["shards"])
    if to in ("recordio", "webdataset"):  # sequential readers: interleave identities
        # At most 1000 bucket files are open at once; beyond ~250 GB the buckets grow instead.
        buckets = min(1000, max(1, math.ceil(data_bytes / (bucket_mb * (1 << 20)))))
        samples = shuffled(samples, seed, partial / ".shuffle", buckets)
    writer: ExportWriter
    if to == "imagefolder":
        writer = ImageFolderWriter(partial, num_labels)
    elif to == "recordio":
        writer = RecordIOWriter(partial, num_images, num_labels)
    elif to == "lmdb":
        writer = LMDBWriter(partial, num_labels, data_bytes)
    else:
        writer = WebDatasetWriter(partial, int(shard_size_mb * (1 << 20)))
    for sample in tqdm(samples, total=num_images, unit="img", desc=f"export {to}", disable=not progress):
        writer.write(sample)
    summary = writer.close()
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(partial, dest)
    return {"format": to, "dest": str(dest), **summary}
