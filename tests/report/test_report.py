"""``facesynth report`` end to end: the smoke dataset, the same dataset in four formats, real faces, a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from facesynth.cli import main
from facesynth.report import report


def _files(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


@pytest.mark.slow
def test_smoke_report_writes_page_stats_and_plots_only_under_out(
    smoke: Path, smoke_report: Path, tmp_path: Path
) -> None:
    out = smoke_report
    assert {"report.html", "stats.json", "verification.png", "separability.png", "consistency.png",
            "diversity.png", "separation.png", "funnel.png", "cache"} <= {p.name for p in out.iterdir()}  # fmt: skip
    stats = json.loads((out / "stats.json").read_text())["datasets"]["out"]
    run = json.loads((smoke / "stats.json").read_text())
    assert stats["images"] == run["images_kept"] and stats["identities"] == run["identities_kept"]
    assert stats["funnel"]["images_generated"] == run["images_generated"]
    assert sum(stats["funnel"]["reasons"].values()) == sum(run["rejected_by"].values())
    assert stats["separation_requested_vs_realised"]["requested_max_cosine"] == 0.3
    assert "--detector none" in stats["diversity"]["pose_note"] and stats["diversity"]["yaw"]["count"] == 0
    v = stats["verification"]
    assert 0 <= v["eer"]["ci95"][0] <= v["eer"]["value"] <= v["eer"]["ci95"][1] <= 1
    # the cache is keyed by the embedder's space (family:sha256 of its weights)
    (entry,) = (out / "cache").iterdir()
    from facesynth.faces.models import get_embedder

    assert json.loads((entry / "meta.json").read_text())["space"] == get_embedder({"name": "dlib"}).space
    # a second run reads the cache (the entry is not rewritten) and writes nothing into the dataset
    before = _files(smoke)
    stamp = (entry / "embeddings.npy").stat().st_mtime_ns
    assert (
        main(
            [
                "report",
                str(smoke),
                "--embedder",
                "dlib",
                "--aligned",
                "--detector",
                "none",
                "--out",
                str(out),
                "--no-progress",
            ]
        )  # fmt: skip
        == 0
    )
    assert (entry / "embeddings.npy").stat().st_mtime_ns == stamp
    assert _files(smoke) == before
    # one-line errors: empty dataset, unknown embedder, output inside the dataset
    (tmp_path / "empty" / "someone").mkdir(parents=True)
    assert main(["report", str(tmp_path / "empty"), "--embedder", "dlib", "--out", str(tmp_path / "r2")]) == 2
    assert main(["report", str(smoke), "--embedder", "dlibb", "--out", str(tmp_path / "r3")]) == 2
    assert main(["report", str(smoke), "--embedder", "dlib", "--out", str(smoke / "report")]) == 2
    assert not (smoke / "report").exists()


FIGURES = ("verification", "separability", "consistency", "diversity", "images")


@pytest.mark.slow
def test_the_same_dataset_in_four_formats_gives_identical_figures(
    smoke_formats: dict[str, Path], smoke_report: Path, tmp_path: Path
) -> None:
    from facesynth.report import _finite
    from facesynth.report.analyse import analyse
    from facesynth.report.cache import read_entry
    from facesynth.report.embed import cached_embeddings

    (parquet,) = json.loads((smoke_report / "stats.json").read_text())["datasets"].values()
    cache = tmp_path / "cache"
    for kind in ("imagefolder", "recordio", "lmdb"):  # each read through its own reader and embedded
        entry = cached_embeddings(smoke_formats[kind], "dlib", cache, True, "none", progress=False)
        stats = json.loads(json.dumps(_finite(analyse(entry, kind, progress=False).stats)))
        assert {k: stats[k] for k in FIGURES} == {k: parquet[k] for k in FIGURES}, kind
    # side by side, against an embeddings-file gallery with one planted leak: no embedding is recomputed
    entries = sorted(cache.iterdir())
    stamps = [(e / "embeddings.npy").stat().st_mtime_ns for e in entries]
    planted = read_entry(entries[0]).rows(0, 1)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((50, planted.shape[1])).astype(np.float32)
    np.save(
        tmp_path / "real.npy", np.concatenate([noise / np.linalg.norm(noise, axis=1, keepdims=True), planted])
    )
    out = tmp_path / "cmp"
    args = ["report", str(smoke_formats["lmdb"]), str(smoke_formats["recordio"]), "--embedder", "dlib", "--aligned",
            "--detector", "none", "--gallery", str(tmp_path / "real.npy"), "--cache", str(cache), "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert [(e / "embeddings.npy").stat().st_mtime_ns for e in entries] == stamps
    both = json.loads((out / "stats.json").read_text())["datasets"]
    assert set(both) == {"smoke.lmdb", "rec"}
    for stats in both.values():
        assert stats["leakage"]["gallery_size"] == 51 and stats["leakage"]["image_best_match"]["max"] > 0.999
        assert stats["verification"] == parquet["verification"]
    assert "leakage.png" in json.loads((out / "stats.json").read_text())["figures"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ImageFolder datasets of real faces: astronaut variants + LFW crops, and a 'real' gallery."""
    from skimage.data import astronaut, lfw_subset

    root = tmp_path_factory.mktemp("faces")
    a = astronaut()
    variants = [cv2.resize(a[20:420, 60:400], (340, 400)), np.ascontiguousarray(a[:, ::-1]),
                np.clip(a.astype(np.float32) * 1.25, 0, 255).astype(np.uint8), (a * 0.75).astype(np.uint8)]  # fmt: skip
    lfw = [
        cv2.resize((g * 255).astype(np.uint8), (160, 160), interpolation=cv2.INTER_CUBIC)
        for g in lfw_subset()[:6]
    ]
    data, gallery = root / "synthetic", root / "gallery"
    for i, image in enumerate(variants):
        (data / "astronaut").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(data / "astronaut" / f"{i}.png")
    for i, image in enumerate(lfw[:4]):
        (data / f"lfw{i}").mkdir()
        Image.fromarray(np.repeat(image[:, :, None], 3, 2)).save(data / f"lfw{i}" / "0.png")
    # the same pictures as aligned 112x112 crops, aligned by our aligner on dlib's landmarks
    from facesynth.faces.align import align, main_face
    from facesynth.faces.models import get_detector

    detector = get_detector({"name": "dlib"})
    for picture in sorted(data.rglob("*.png")):
        rgb = np.asarray(Image.open(picture).convert("RGB"))
        face = main_face(detector.detect(rgb))
        if face is not None:
            crop = root / "aligned" / picture.relative_to(data)
            crop.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(align(rgb, face.landmarks, 112)).save(crop)
    (gallery / "eileen").mkdir(parents=True)
    Image.fromarray(cv2.GaussianBlur(a, (0, 0), 1.0)).save(gallery / "eileen" / "0.png")
    for i, image in enumerate(lfw[4:]):
        (gallery / f"person{i}").mkdir()
        Image.fromarray(np.repeat(image[:, :, None], 3, 2)).save(gallery / f"person{i}" / "0.png")
    return {"data": data, "gallery": gallery, "aligned": root / "aligned"}


def attribute_model(path: Path) -> Path:
    """A tiny ONNX attribute classifier: mean colour -> 'gender' (2 classes, named) and 'age' (a value)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((3, 2)).astype(np.float32), "w_gender"),
        numpy_helper.from_array(np.abs(rng.standard_normal((3, 1))).astype(np.float32) * 30, "w_age"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Reshape", ["pooled", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w_gender"], ["gender"]),
        helper.make_node("MatMul", ["flat", "w_age"], ["age"]),
    ]
    graph = helper.make_graph(
        nodes, "attributes", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("gender", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("age", TensorProto.FLOAT, ["N", 1])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, {"labels_gender": "female,male"})
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def faces_report(faces: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faces-report")
    model = attribute_model(tmp_path_factory.mktemp("attributes") / "attributes.onnx")
    report([faces["data"]], "dlib", out, gallery=faces["gallery"], attributes=str(model), progress=False)
    return out


@pytest.mark.slow
def test_real_faces_through_dlib(faces_report: Path) -> None:
    stats = json.loads((faces_report / "stats.json").read_text())["datasets"]["synthetic"]
    assert stats["images_with_face"] >= 5 and stats["identities_with_face"] >= 2
    # the astronaut variants are one person to dlib (same-person cosine > 0.915)
    assert stats["verification"]["mated_pairs"] >= 3
    assert stats["consistency"]["image_to_centroid_cosine"]["min"] > 0.915
    assert stats["diversity"]["yaw"]["count"] >= 5  # pose from the detected landmarks
    # the gallery holds the astronaut: the closest gallery match is hers, far above the rest
    leak = stats["leakage"]
    assert leak["gallery_size"] >= 2 and leak["tail"][0] > 0.915 and leak["tail"][1] < leak["tail"][0]
    assert leak["share_identities_above"]["fixed_0.3"] > 0
    attributes = stats["attributes"]
    assert sum(attributes["gender"].values()) == stats["images_with_face"] and set(attributes["gender"]) == {
        "female",
        "male",
    }
    assert attributes["age"]["count"] == stats["images_with_face"] and attributes["age"]["std"] > 0
    assert (faces_report / "attributes.png").is_file()
    page = (faces_report / "report.html").read_text()
    assert "closest gallery matches" in page and "1-(1-f)^M" in page
    assert page.count("<img") >= 10 and "src='http" not in page and 'src="http' not in page


def pose_by_image(cache: Path) -> dict[str, tuple[float, float, float]]:
    """(yaw, pitch, roll) of each image of a cache entry, by ``identity/image`` name."""
    from facesynth.readers import open_dataset
    from facesynth.report.cache import read_entry

    (folder,) = [p for p in cache.iterdir() if p.name.startswith(("synthetic-", "aligned-"))]
    entry = read_entry(folder)
    dataset = open_dataset(entry.meta["dataset"])
    m, names = entry.measures, entry.meta["identity_names"]
    return {
        f"{names[k]}/{dataset.name(int(i))}": (float(m["yaw"][r]), float(m["pitch"][r]), float(m["roll"][r]))
        for r, (i, k) in enumerate(zip(entry.index, entry.labels, strict=True))
    }


@pytest.mark.slow
def test_pose_of_aligned_crops_matches_the_pose_of_the_pictures(
    faces: dict[str, Path], faces_report: Path, tmp_path: Path
) -> None:
    out = tmp_path / "aligned"
    stats = report([faces["aligned"]], "dlib", out, aligned=True, progress=False)["datasets"]["aligned"]
    crops, pictures = pose_by_image(out / "cache"), pose_by_image(faces_report / "cache")
    assert len(crops) == sum(np.isfinite(p[0]) for p in pictures.values()) >= 6  # a crop per face found
    both = [i for i in crops if np.isfinite(crops[i][0])]
    assert len(both) >= 7  # the detector finds the face again in (nearly) every aligned crop
    yaw = np.array([[crops[i][0], pictures[i][0]] for i in both])
    pitch = np.array([[crops[i][1], pictures[i][1]] for i in both])
    # a similarity transform keeps yaw and pitch; roll is gone (unknown for crops)
    assert np.median(np.abs(yaw[:, 0] - yaw[:, 1])) < 3 and np.abs(yaw[:, 0] - yaw[:, 1]).max() < 8
    assert np.median(np.abs(pitch[:, 0] - pitch[:, 1])) < 3 and np.abs(pitch[:, 0] - pitch[:, 1]).max() < 8
    assert all(np.isnan(crops[i][2]) for i in crops)
    # the mirrored astronaut (image 1) turns the other way than the unmirrored ones (0, 2, 3)
    flipped, darker = crops["astronaut/1.png"][0], crops["astronaut/3.png"][0]
    assert abs(flipped + darker) < 2 and np.sign(flipped) != np.sign(darker)
    assert (
        stats["diversity"]["yaw"]["count"] == len(both)
        and "roll is unknown" in stats["diversity"]["pose_note"]
    )
    assert "aligning removed it" in (out / "report.html").read_text()


def test_the_page_says_why_pose_is_absent() -> None:
    from facesynth.report.analyse import pose_note

    measures = {"yaw": np.full(3, np.nan, np.float32)}
    valid = np.ones(3, bool)
    assert "found no face" in pose_note({"aligned": True, "detector": "dlib"}, measures, valid)
    assert "0 of 3" in pose_note({"aligned": False, "detector": "dlib"}, measures, valid)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


# Appended to a copy of the page: after load, lists every <img> with its natural width.
PROBE = """<script>window.addEventListener('load', () => {
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify([...document.images].map(i => [i.complete, i.naturalWidth]));
  document.body.appendChild(out);});</script>"""


@pytest.mark.slow
def test_page_renders_in_a_real_headless_chromium(faces_report: Path, tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (scripts/test.sh installs it)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]  # fmt: skip
    probe = tmp_path / "probe.html"
    probe.write_text((faces_report / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    dom = subprocess.run(
        [*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    start = dom.index('<pre id="probe">') + len('<pre id="probe">')
    images = json.loads(dom[start : dom.index("</pre>", start)])
    assert len(images) >= 10 and all(complete and width > 0 for complete, width in images)
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,1600", (faces_report / "report.html").as_uri()],
                   capture_output=True, timeout=120)  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert pixels.shape == (1600, 1200) and pixels.std() > 10  # not blank
