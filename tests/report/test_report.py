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
def test_smoke_report_writes_page_stats_and_plots_only_under_out(smoke: Path, tmp_path: Path) -> None:
    before = _files(smoke)
    out = tmp_path / "report"
    assert (
        main(["report", str(smoke), "--embedder", "dlib", "--aligned", "--out", str(out), "--no-progress"])
        == 0
    )
    assert _files(smoke) == before  # nothing written into the dataset
    assert {"report.html", "stats.json", "verification.png", "separability.png", "consistency.png",
            "diversity.png", "separation.png", "funnel.png", "cache"} <= {p.name for p in out.iterdir()}  # fmt: skip
    stats = json.loads((out / "stats.json").read_text())["datasets"]["out"]
    run = json.loads((smoke / "stats.json").read_text())
    assert stats["images"] == run["images_kept"] and stats["identities"] == run["identities_kept"]
    assert stats["funnel"]["images_generated"] == run["images_generated"]
    assert sum(stats["funnel"]["reasons"].values()) == sum(run["rejected_by"].values())
    assert stats["separation_requested_vs_realised"]["requested_max_cosine"] == 0.3
    v = stats["verification"]
    assert 0 <= v["eer"]["ci95"][0] <= v["eer"]["value"] <= v["eer"]["ci95"][1] <= 1
    # a second run reads the cache: the entry is not rewritten
    entry = next((out / "cache").iterdir())
    stamp = (entry / "embeddings.npy").stat().st_mtime_ns
    assert (
        main(["report", str(smoke), "--embedder", "dlib", "--aligned", "--out", str(out), "--no-progress"])
        == 0
    )
    assert (entry / "embeddings.npy").stat().st_mtime_ns == stamp
    # one-line errors: empty dataset, unknown embedder, output inside the dataset
    (tmp_path / "empty" / "someone").mkdir(parents=True)
    assert main(["report", str(tmp_path / "empty"), "--embedder", "dlib", "--out", str(tmp_path / "r2")]) == 2
    assert main(["report", str(smoke), "--embedder", "dlibb", "--out", str(tmp_path / "r3")]) == 2
    assert main(["report", str(smoke), "--embedder", "dlib", "--out", str(smoke / "report")]) == 2
    assert not (smoke / "report").exists()


@pytest.mark.slow
def test_the_same_dataset_in_four_formats_gives_identical_figures(
    smoke_formats: dict[str, Path], tmp_path: Path
) -> None:
    figures = {}
    for kind, path in smoke_formats.items():
        stats = report(
            [path], "dlib", tmp_path / kind, aligned=True, cache=tmp_path / "cache", progress=False
        )
        (one,) = stats["datasets"].values()
        figures[kind] = {
            k: one[k] for k in ("verification", "separability", "consistency", "diversity", "images")
        }
    assert len(list((tmp_path / "cache").iterdir())) == 4  # one entry per dataset
    for kind in ("imagefolder", "recordio", "lmdb"):
        assert figures[kind] == figures["parquet"], kind
    # side by side, against an embeddings-file gallery with one planted leak: no embedding is recomputed
    from facesynth.report.cache import read_entry

    entries = sorted((tmp_path / "cache").iterdir())
    stamps = [(e / "embeddings.npy").stat().st_mtime_ns for e in entries]
    planted = read_entry(entries[0]).rows(0, 1)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((50, planted.shape[1])).astype(np.float32)
    np.save(
        tmp_path / "real.npy", np.concatenate([noise / np.linalg.norm(noise, axis=1, keepdims=True), planted])
    )
    out = tmp_path / "cmp"
    args = ["report", str(smoke_formats["lmdb"]), str(smoke_formats["recordio"]), "--embedder", "dlib", "--aligned",
            "--gallery", str(tmp_path / "real.npy"), "--cache", str(tmp_path / "cache"), "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert [(e / "embeddings.npy").stat().st_mtime_ns for e in entries] == stamps
    both = json.loads((out / "stats.json").read_text())["datasets"]
    assert set(both) == {"smoke.lmdb", "rec"}
    for stats in both.values():
        assert stats["leakage"]["gallery_size"] == 51 and stats["leakage"]["image_best_match"]["max"] > 0.999
        assert stats["verification"] == figures["parquet"]["verification"]
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
    (gallery / "eileen").mkdir(parents=True)
    Image.fromarray(cv2.GaussianBlur(a, (0, 0), 1.0)).save(gallery / "eileen" / "0.png")
    for i, image in enumerate(lfw[4:]):
        (gallery / f"person{i}").mkdir()
        Image.fromarray(np.repeat(image[:, :, None], 3, 2)).save(gallery / f"person{i}" / "0.png")
    return {"data": data, "gallery": gallery}


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
