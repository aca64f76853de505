"""Eval sets: .bin files as insightface's tools write them, a malicious pickle, pairs lists, HF datasets."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from facesynth.errors import UserInputError
from facesynth.recognition.evalsets import load_eval_set

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def faces(count: int, size: int = 112, seed: int = 0) -> list[np.ndarray]:
    """Random RGB images with some structure (so JPEG keeps them distinguishable)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (count, 8, 8, 3), dtype=np.uint8)
    return [cv2.resize(b, (size, size), interpolation=cv2.INTER_LINEAR) for b in base]


def encode(rgb: np.ndarray) -> np.ndarray:
    """As insightface's build_eval_pack.py: cv2.imencode of the BGR crop -> a uint8 array."""
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buffer


ISSAME = [i % 2 == 0 for i in range(10)]


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("variant", ["bytes", "numpy", "numpy_column"])
def test_bin_written_like_insightface_loads(tmp_path: Path, variant: str, protocol: int) -> None:
    images = faces(20)
    encoded = [encode(im) for im in images]
    bins = {
        "bytes": [e.tobytes() for e in encoded],
        "numpy": encoded,
        "numpy_column": [e.reshape(-1, 1) for e in encoded],  # older OpenCV returns [M, 1]
    }[variant]
    path = tmp_path / "lfw.bin"
    with path.open("wb") as f:
        pickle.dump((bins, ISSAME), f, protocol=protocol)
    evalset = load_eval_set(path)
    assert evalset.name == "lfw" and evalset.pairs == 10
    assert evalset.issame.tolist() == ISSAME
    for i in (0, 7, 19):
        expected = cv2.cvtColor(cv2.imdecode(encoded[i], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.array_equal(evalset.image(i), expected)


def test_python2_bin_needs_bytes_encoding_and_is_resized() -> None:
    path = FIXTURES / "py2_eval.bin"
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(path.read_bytes())  # plain Python 3 pickle cannot read it
    evalset = load_eval_set(path)
    assert evalset.pairs == 10 and evalset.issame.tolist() == [i % 3 == 0 for i in range(10)]
    assert isinstance(evalset.images[0], bytes)
    # 16x16 images: width != 112, so the short side is resized to 112 (bicubic), as mx.image.resize_short
    raw = cv2.cvtColor(cv2.imdecode(np.frombuffer(evalset.images[3], np.uint8), 1), cv2.COLOR_BGR2RGB)
    assert raw.shape == (16, 16, 3)
    assert np.array_equal(evalset.image(3), cv2.resize(raw, (112, 112), interpolation=cv2.INTER_CUBIC))


class _Exploit:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):  # what an attacker's .bin holds: a call run at unpickling time
        return (os.system, (f"touch {self.target}",))


def test_malicious_bin_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps(([_Exploit(str(target))], [True])))
    # proof that the file is a working exploit: plain pickle in another process creates the file
    proof = tmp_path / "proof"
    proof_bin = tmp_path / "proof.bin"
    proof_bin.write_bytes(pickle.dumps(([_Exploit(str(proof))], [True])))
    subprocess.run(
        [sys.executable, "-c", f"import pickle; pickle.load(open({str(proof_bin)!r}, 'rb'))"], check=True
    )
    assert proof.exists()

    with pytest.raises(UserInputError, match=r"system .*refusing to load it"):
        load_eval_set(path)
    assert not target.exists()

    result = subprocess.run(
        [sys.executable, "-m", "facesynth.cli", "eval", str(path), "--bin", str(path)],
        capture_output=True,
        text=True,
    )
    assert not target.exists()
    assert result.returncode == 2, result.stderr
    assert "refusing to load it" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bin_with_other_content_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(pickle.dumps(([np.zeros(4, np.float32)], [True])))
    with pytest.raises(UserInputError, match="encoded images"):
        load_eval_set(path)
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UserInputError, match=r"\(images, issame\)"):
        load_eval_set(path)
    path.write_bytes(b"garbage")
    with pytest.raises(UserInputError, match="not a readable eval .bin"):
        load_eval_set(path)


def test_pairs_list(tmp_path: Path) -> None:
    images = faces(20)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(images):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    lines = ["# insightface pairs_label.txt layout", ""]
    lines += [f"imgs/{2 * k}.png imgs/{2 * k + 1}.png {int(s)}" for k, s in enumerate(ISSAME)]
    listing = tmp_path / "pairs.txt"
    listing.write_text("\n".join(lines))
    evalset = load_eval_set(listing)
    assert evalset.pairs == 10 and evalset.issame.tolist() == ISSAME
    assert np.array_equal(evalset.image(5), images[5])  # PNG: lossless
    listing.write_text("imgs/0.png imgs/1.png yes\n")
    with pytest.raises(UserInputError, match=r"pairs.txt:1: expected"):
        load_eval_set(listing)
    listing.write_text("imgs/0.png imgs/missing.png 1\n")
    with pytest.raises(UserInputError, match="not found"):
        load_eval_set(listing)


def test_hf_datasets_both_layouts(tmp_path: Path) -> None:
    import datasets

    images = faces(20)
    pngs = [cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in images]
    # one row per image (CVLFace's layout), rows shuffled: `index` gives the file order
    order = np.random.default_rng(1).permutation(20)
    per_image = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": pngs[i], "path": None} for i in order],
            "index": [int(i) for i in order],
            "is_same": [ISSAME[i // 2] for i in order],
        },
        features=datasets.Features(
            {"image": datasets.Image(), "index": datasets.Value("int64"), "is_same": datasets.Value("bool")}
        ),
    )
    per_image.save_to_disk(str(tmp_path / "agedb_30"))
    evalset = load_eval_set(tmp_path / "agedb_30")
    assert evalset.name == "agedb_30" and evalset.issame.tolist() == ISSAME
    assert all(np.array_equal(evalset.image(i), images[i]) for i in (0, 11, 19))
    # one row per pair, as parquet
    per_pair = datasets.Dataset.from_dict(
        {
            "image1": [{"bytes": pngs[2 * k], "path": None} for k in range(10)],
            "image2": [{"bytes": pngs[2 * k + 1], "path": None} for k in range(10)],
            "is_same": ISSAME,
        },
        features=datasets.Features(
            {"image1": datasets.Image(), "image2": datasets.Image(), "is_same": datasets.Value("bool")}
        ),
    )
    per_pair.to_parquet(str(tmp_path / "calfw.parquet"))
    evalset = load_eval_set(tmp_path / "calfw.parquet")
    assert evalset.name == "calfw" and evalset.issame.tolist() == ISSAME
    assert np.array_equal(evalset.image(13), images[13])


def test_missing_and_unknown_eval_sets(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="where-to-get-the-eval-sets"):
        load_eval_set(tmp_path / "lfw.bin")
    (tmp_path / "lfw.zip").write_bytes(b"")
    with pytest.raises(UserInputError, match="unknown eval set form"):
        load_eval_set(tmp_path / "lfw.zip")
