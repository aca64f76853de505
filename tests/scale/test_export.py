"""Exports read back by their consumers (and by an independent RecordIO reader); the Hub upload plan."""

from __future__ import annotations

import io
import json
import shutil
import struct
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from PIL import Image

from facesynth import layout
from facesynth.cli import main
from facesynth.errors import FacesynthError, UserInputError
from facesynth.export import RECORDIO_MAGIC, frame_record, pack_record
from facesynth.hub import push, upload_plan

# ----------------------------------------------------------------------------- an independent reader
# Written from the format description alone (dmlc RecordIO + MXNet's IRHeader), not from our writer.


def read_recordio(rec: Path, idx: Path) -> tuple[dict[int, tuple[int, int, float, bytes, list[float]]], list]:
    """key -> (flag, id, label, image bytes, vector label) via train.idx offsets; plus a sequential scan."""
    data = rec.read_bytes()

    def record_at(pos: int) -> tuple[bytes, int]:
        parts = []
        while True:
            magic, lrec = struct.unpack_from("<II", data, pos)
            assert magic == 0xCED7230A
            cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            parts.append(data[pos + 8 : pos + 8 + length])
            pos += 8 + (length + 3) // 4 * 4
            if cflag in (0, 3):
                return struct.pack("<I", 0xCED7230A).join(parts), pos

    def unpack(payload: bytes) -> tuple[int, int, float, bytes, list[float]]:
        flag, label, rid, _ = struct.unpack_from("<IfQQ", payload)
        body = payload[24:]
        vector = list(struct.unpack_from(f"<{flag}f", body)) if flag else []
        return flag, rid, label, body[4 * flag :], vector

    records = {}
    for line in idx.read_text().splitlines():
        key, offset = line.split("\t")
        records[int(key)] = unpack(record_at(int(offset))[0])
    sequential, pos = [], 0
    while pos < len(data):
        payload, pos = record_at(pos)
        sequential.append(unpack(payload))
    return records, sequential


def _rows(out: Path) -> list[dict]:
    rows = []
    for path in sorted((out / layout.DATA).glob("*.parquet")):
        rows += pq.read_table(path, columns=["image", "label", "identity", "attempt"]).to_pylist()
    return rows


def test_record_framing_escapes_the_magic_word_and_reads_back(tmp_path: Path) -> None:
    magic = struct.pack("<I", RECORDIO_MAGIC)
    # the magic at aligned offsets (24 = right after the header, 32) and unaligned (41), odd length
    image = magic + b"abcd" + magic + b"x" + magic + b"yz"
    framed = frame_record(pack_record(7.0, 1, image))
    assert len(framed) % 4 == 0
    # split at payload offsets 24 and 32 into three parts, each with its magic; the one at 37 stays
    assert framed.count(magic) == 4 and framed[4:8] == struct.pack("<I", (1 << 29) | 24)
    rec, idx = tmp_path / "t.rec", tmp_path / "t.idx"
    rec.write_bytes(framed + frame_record(pack_record(3.0, 2, b"q")))
    idx.write_text(f"1\t0\n2\t{len(framed)}\n")
    records, sequential = read_recordio(rec, idx)
    assert records[1] == (0, 1, 7.0, image, []) and records[2] == (0, 2, 3.0, b"q", [])
    assert sequential == [records[1], records[2]]


def test_recordio_export_reads_back_shuffled_and_deterministic(reference: Path, tmp_path: Path) -> None:
    dest = tmp_path / "rec"
    assert main(["export", str(reference), str(dest), "--to", "recordio", "--no-progress"]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["property", "train.idx", "train.rec"]
    records, sequential = read_recordio(dest / "train.rec", dest / "train.idx")
    rows = _rows(reference)
    stats = json.loads((reference / layout.STATS).read_text())
    # header record 0: vector label [N + 1, ...]; images are records 1..N (what arcface_torch reads)
    flag, _, _, _, vector = records[0]
    assert flag == 2 and int(vector[0]) == len(rows) + 1
    assert sorted(records) == list(range(len(rows) + 1)) and len(sequential) == len(rows) + 1
    assert all(rid == key for key, (_, rid, *_) in records.items())
    got = sorted((int(label), image) for key, (_, _, label, image, _) in records.items() if key)
    assert got == sorted((r["label"], r["image"]["bytes"]) for r in rows)
    assert Image.open(io.BytesIO(records[1][3])).size == (64, 64)
    assert (dest / "property").read_text().strip() == f"{stats['identities_kept']},64,64"
    # identities are interleaved: storage order has 4 images of one label in a row, the export not
    labels = [int(records[k][2]) for k in range(1, len(rows) + 1)]
    assert labels != sorted(labels) and len(set(labels[:8])) >= 4
    # and the same seed gives the same bytes
    again = tmp_path / "again"
    assert main(["export", str(reference), str(again), "--to", "recordio", "--no-progress"]) == 0
    assert (again / "train.rec").read_bytes() == (dest / "train.rec").read_bytes()


def test_imagefolder_export_loads_with_datasets(reference: Path, tmp_path: Path) -> None:
    dest = tmp_path / "folder"
    assert main(["export", str(reference), str(dest), "--to", "imagefolder", "--no-progress"]) == 0
    ds = load_dataset("imagefolder", data_dir=str(dest), split="train")
    rows = _rows(reference)
    assert len(ds) == len(rows)
    names = ds.features["label"].names
    assert names == sorted(names) and [int(n) for n in names] == list(range(len(names)))
    by_key = {(r["label"], r["image"]["bytes"]) for r in rows}
    for example in ds.cast_column("image", ds.features["image"].__class__(decode=False)):
        image = example["image"]["bytes"] or Path(example["image"]["path"]).read_bytes()
        assert (example["label"], image) in by_key
    # refuses to overwrite unless asked
    assert main(["export", str(reference), str(dest), "--to", "imagefolder", "--no-progress"]) == 2
    assert (
        main(["export", str(reference), str(dest), "--to", "imagefolder", "--overwrite", "--no-progress"])
        == 0
    )


def test_webdataset_export_loads_with_datasets(reference: Path, tmp_path: Path) -> None:
    dest = tmp_path / "wds"
    assert main(["export", str(reference), str(dest), "--to", "webdataset", "--shard-size-mb", "0.05",
                 "--no-progress"]) == 0  # fmt: skip
    shards = sorted(dest.glob("*.tar"))
    assert len(shards) > 1 and shards[0].name == "train-00000.tar"
    ds = load_dataset("webdataset", data_dir=str(dest), split="train")
    rows = {(r["identity"], r["attempt"]): r for r in _rows(reference)}
    assert len(ds) == len(rows)
    for example in ds.cast_column("jpg", ds.features["jpg"].__class__(decode=False)):
        row = rows[example["json"]["identity"], example["json"]["attempt"]]
        assert example["cls"] == example["json"]["label"] == row["label"]
        assert example["jpg"]["bytes"] == row["image"]["bytes"]
        assert example["__key__"] == f"{row['identity']:07d}_{row['attempt']:04d}"


def test_export_refuses_an_unfinished_output_and_a_destination_holding_the_dataset(
    reference: Path, tmp_path: Path
) -> None:
    from facesynth.export import export

    (tmp_path / "out").mkdir()
    with pytest.raises(UserInputError, match="not a finished dataset"):
        export(tmp_path / "out", "recordio", tmp_path / "dest")
    with pytest.raises(UserInputError, match="neither holds nor is inside"):
        export(reference, "imagefolder", reference.parent, overwrite=True)  # would delete the dataset
    assert (reference / layout.STATS).exists()


# ----------------------------------------------------------------------------- Hub upload plan


def test_upload_plan_lists_every_visible_file_card_last(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / ".slurm" / "logs").mkdir(parents=True)
    (out / ".slurm" / "logs" / "1_0.log").write_text("hidden: not uploaded")
    plan = upload_plan(out)
    shards = sorted(f"data/{p.name}" for p in (out / "data").glob("*.parquet"))
    expected = {*shards, "README.md", "stats.json", "recipe.yaml", "run.json", "bank.safetensors",
                "identities.parquet", "rejected.parquet"}  # fmt: skip
    assert set(plan.files) == expected
    assert plan.files["stats.json"] == (out / "stats.json").stat().st_size
    assert plan.data[: len(shards)] == shards and set(plan.data) == expected - {"README.md"}  # data first


class FakeHfApi:
    """Stands in for ``huggingface_hub.HfApi`` (2.x): a dict of remote files, and the calls in order."""

    def __init__(self, remote: dict[str, bytes] | None = None, fail_on: str | None = None) -> None:
        self.remote = dict(remote or {})
        self.calls: list[str] = []
        self.fail_on = fail_on

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_on:
            import httpx2  # huggingface_hub 2's HTTP client
            from huggingface_hub.errors import HfHubHTTPError

            response = httpx2.Response(401, request=httpx2.Request("POST", "https://huggingface.co/api"))
            raise HfHubHTTPError("401 Client Error: Unauthorized", response=response)

    def create_repo(self, repo_id, repo_type, private, exist_ok):  # noqa: ANN001, ANN201
        self._call("create_repo")
        assert repo_type == "dataset" and exist_ok
        return f"https://huggingface.co/datasets/{repo_id}"

    def create_branch(self, repo_id, repo_type, branch, exist_ok):  # noqa: ANN001, ANN201
        self._call("create_branch")

    def list_repo_files(self, repo_id, repo_type, revision):  # noqa: ANN001, ANN201
        self._call("list_repo_files")
        return list(self.remote)

    def upload_folder(self, *, repo_id, repo_type, revision, folder_path, allow_patterns, commit_message):  # noqa: ANN001, ANN201
        import fnmatch

        self._call("upload_folder")
        for path in Path(folder_path).rglob("*"):
            name = path.relative_to(folder_path).as_posix()
            if path.is_file() and any(fnmatch.fnmatchcase(name, p) for p in allow_patterns):
                self.remote[name] = path.read_bytes()

    def create_commit(self, *, repo_id, repo_type, revision, operations, commit_message):  # noqa: ANN001, ANN201
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        self._call("create_commit")
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                self.remote[op.path_in_repo] = Path(op.path_or_fileobj).read_bytes()
            else:
                assert isinstance(op, CommitOperationDelete)
                del self.remote[op.path_in_repo]


def test_push_uploads_data_then_the_card_and_removes_stale_shards(reference: Path) -> None:
    old_shard = "data/train-00000-of-00009.parquet"
    api = FakeHfApi(remote={old_shard: b"an older version", "README.md": b"old card"})
    url = push(reference, "org/name", revision="v2", api=api)
    assert url == "https://huggingface.co/datasets/org/name"
    assert api.calls == ["create_repo", "create_branch", "list_repo_files", "upload_folder", "create_commit"]
    plan = upload_plan(reference)
    assert set(api.remote) == set(plan.files)  # the old shard is gone, everything else is there
    assert all(api.remote[name] == (reference / name).read_bytes() for name in plan.files)
    from huggingface_hub import DatasetCard

    card = DatasetCard(api.remote["README.md"].decode()).data  # the metadata parses as the Hub reads it
    assert card.pretty_name == json.loads((reference / "stats.json").read_text())["recipe_name"]
    assert card.configs[0]["data_files"][0]["path"] == "data/train-*" and "facesynth" in card.tags
    # a rerun (e.g. after an interruption) converges to the same remote state
    again = FakeHfApi(remote=api.remote)
    push(reference, "org/name", api=again)
    assert again.remote == api.remote


def test_push_without_write_access_says_how_to_log_in(reference: Path) -> None:
    api = FakeHfApi(fail_on="upload_folder")
    with pytest.raises(FacesynthError, match="hf auth login"):
        push(reference, "org/name", api=api)
    assert "README.md" not in api.remote  # the card never goes up before the data


def test_upload_plan_refuses_a_folder_over_the_hub_limit(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    for i in range(10_000):
        (out / "data" / f"extra-{i:05d}.parquet").touch()
    with pytest.raises(UserInputError, match="fewer than 10,000 per folder"):
        upload_plan(out)


def test_push_cli_dry_run_and_offline_refusal(reference: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["push", str(reference), "--repo", "org/name", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "then, in the last commit: README.md" in printed and "datasets/org/name" in printed
    # the suite runs with HF_HUB_OFFLINE=1: a real push stops with one line, before any upload
    assert main(["push", str(reference), "--repo", "org/name"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert main(["push", str(reference), "--repo", "not-a-repo-id"]) == 2
