"""Shared fixtures for the filter tests: real faces (skimage) and tiny ONNX models in real layouts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from facesynth.interfaces import Candidate, FilterContext

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def grey_to_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """An lfw_subset 25x25 float image as a size x size RGB uint8 picture."""
    grey = cv2.resize((image * 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    return np.repeat(grey[:, :, None], 3, axis=2)


@pytest.fixture(scope="session")
def lfw() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(100 LFW faces, 100 non-faces), upscaled to 100 px RGB."""
    from skimage.data import lfw_subset

    images = [grey_to_rgb(g, 100) for g in lfw_subset()]
    return images[:100], images[100:]


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage.data import astronaut

    return astronaut()


@pytest.fixture(scope="session")
def astronaut_variants(astronaut: np.ndarray) -> list[np.ndarray]:
    """Augmented copies: crop, flip, brighter, darker, mild blur."""
    a = astronaut
    return [
        cv2.resize(a[20:420, 60:400], (340, 400)),
        np.ascontiguousarray(a[:, ::-1]),
        np.clip(a.astype(np.float32) * 1.25, 0, 255).astype(np.uint8),
        (a * 0.75).astype(np.uint8),
        cv2.GaussianBlur(a, (0, 0), 1.0),
    ]


@pytest.fixture
def make_batch() -> Callable[..., list[Candidate]]:
    """Candidates from images (np arrays are converted to PIL; None stays None)."""
    from PIL import Image

    def make(images: list, identities: list[int] | None = None) -> list[Candidate]:
        identities = identities or [0] * len(images)
        return [
            Candidate(
                identity=identity,
                attempt=i,
                seed=i,
                vector=np.zeros(4, np.float32),
                image=Image.fromarray(im) if isinstance(im, np.ndarray) else im,
            )
            for i, (im, identity) in enumerate(zip(images, identities, strict=True))
        ]

    return make


@pytest.fixture
def context() -> Callable[..., FilterContext]:
    def make(bank: np.ndarray | None = None, space: str | None = None, identities: int = 4) -> FilterContext:
        bank = bank if bank is not None else np.random.default_rng(0).standard_normal((identities, 8))
        return FilterContext(bank_vectors=bank, unit_identities=list(range(len(bank))), generator_space=space)

    return make


# --- tiny ONNX models in the real input/output layouts ------------------------------------------------


def _init(rng: np.random.Generator, name: str, shape: tuple[int, ...], scale: float = 0.1) -> TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_scrfd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SCRFD layout: input [1, 3, 64, 64]; outputs scores/bbox/kps for strides 8, 16, 32, 2 anchors."""
    rng = np.random.default_rng(1)
    nodes, inits, outputs = [], [], []
    size = 64
    for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
        for stride in (8, 16, 32):
            tag = f"{kind}{stride}"
            cells = (size // stride) ** 2 * 2
            inits += [
                _init(rng, f"w_{tag}", (2 * width, 3, 1, 1)),
                numpy_helper.from_array(np.array([-1, width], np.int64), f"s_{tag}"),
            ]
            nodes += [
                helper.make_node(
                    "AveragePool",
                    ["input.1"],
                    [f"p_{tag}"],
                    kernel_shape=[stride, stride],
                    strides=[stride, stride],
                ),
                helper.make_node("Conv", [f"p_{tag}", f"w_{tag}"], [f"c_{tag}"]),
                helper.make_node("Transpose", [f"c_{tag}"], [f"t_{tag}"], perm=[0, 2, 3, 1]),
                helper.make_node(
                    "Reshape", [f"t_{tag}", f"s_{tag}"], [f"r_{tag}" if kind == "score" else tag]
                ),
            ]
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [f"r_{tag}"], [tag]))
            outputs.append(helper.make_tensor_value_info(tag, TensorProto.FLOAT, [cells, width]))
    graph = helper.make_graph(
        nodes,
        "scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size, size])],
        outputs,
        inits,
    )
    return _save(graph, tmp_path_factory.mktemp("scrfd") / "det_10g.onnx")


def build_tiny_arcface(path: Path, seed: int = 2, mxnet_input: bool = False) -> Path:
    """ArcFace layout: input [N, 3, 112, 112], output [N, 512], random weights.

    ``mxnet_input``: the graph starts with the ``_minus0`` / ``_mulscalar0`` nodes MXNet exports
    carry ((x - 127.5) * 0.0078125 inside the model), so it takes raw 0..255 pixels.
    """
    rng = np.random.default_rng(seed)
    inits = [
        _init(rng, "conv_w", (4, 3, 8, 8)),
        _init(rng, "fc_w", (4 * 14 * 14, 512), 0.05),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], strides=[8, 8]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "flat"], ["f"]),
        helper.make_node("MatMul", ["f", "fc_w"], ["683"]),
    ]
    if mxnet_input:
        inits += [
            numpy_helper.from_array(np.array(127.5, np.float32), "mean"),
            numpy_helper.from_array(np.array(0.0078125, np.float32), "scale"),
        ]
        nodes = [
            helper.make_node("Sub", ["data", "mean"], ["centred"], name="_minus0"),
            helper.make_node("Mul", ["centred", "scale"], ["x"], name="_mulscalar0"),
            *nodes,
        ]
    else:
        nodes[0].input[0] = "data"
    graph = helper.make_graph(
        nodes,
        "arcface",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", 512])],
        inits,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(graph, path)


@pytest.fixture(scope="session")
def tiny_arcface(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_arcface(tmp_path_factory.mktemp("arcface") / "arcface.onnx")


@pytest.fixture(scope="session")
def other_tiny_arcface(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another ArcFace of the same layout and file name, other weights (another space)."""
    return build_tiny_arcface(tmp_path_factory.mktemp("arcface_b") / "arcface.onnx", seed=3)


@pytest.fixture(scope="session")
def mxnet_tiny_arcface(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_arcface(tmp_path_factory.mktemp("arcface_mx") / "w600k_r50.onnx", mxnet_input=True)


@pytest.fixture(scope="session")
def tiny_fiqa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FIQA layout: input [N, 3, 112, 112], output [N, 1]: here the mean normalised brightness."""
    nodes = [helper.make_node("ReduceMean", ["input"], ["score"], axes=[1, 2, 3], keepdims=0)]
    graph = helper.make_graph(
        nodes + [helper.make_node("Unsqueeze", ["score", "axis"], ["quality"])],
        "fiqa",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("quality", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(np.array([1], np.int64), "axis")],
    )
    return _save(graph, tmp_path_factory.mktemp("fiqa") / "fiqa.onnx")
