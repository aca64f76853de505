"""Loading and per-process caching of the face models the filters (and the identity samplers) share.

Filters are built once per process; several of them may name the same detector or embedder,
so models are cached here by their options and shared.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from facesynth.errors import ModelNotFoundError, UserInputError
from facesynth.fingerprint import file_sha256
from facesynth.interfaces import Detector, Embedder

DLIB_INSTALL_HINT = "install them with: pip install 'facesynth[dlib]' (dlib-bin and face_recognition_models)"

# A component given in a recipe: a registered name, or a mapping with "name" plus its options.
ComponentSpec = str | Mapping[str, Any]


def dlib_model_path(filename: str) -> str:
    """Path of a ``face_recognition_models`` file, found without importing it (it needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"dlib face models not found; {DLIB_INSTALL_HINT}")
    path = Path(spec.submodule_search_locations[0]) / "models" / filename
    if not path.is_file():
        raise ModelNotFoundError(f"dlib model file {path} is missing; reinstall face_recognition_models")
    return str(path)


def import_dlib() -> Any:
    try:
        import dlib
    except ImportError:
        raise ModelNotFoundError(f"dlib is not installed; {DLIB_INSTALL_HINT}") from None
    return dlib


INSIGHTFACE_INSTALL_HINT = (
    "insightface is not installed; install it with: pip install 'facesynth[insightface]' (or, to keep "
    "opencv-python-headless the only OpenCV: pip install scikit-image && pip install --no-deps 'insightface>=2')"
)


def insightface_model(path: str, device: str = "auto") -> Any:
    """insightface's own model object for an ONNX file (``insightface.model_zoo.get_model``)."""
    try:
        from insightface.model_zoo import get_model
    except ImportError:
        raise ModelNotFoundError(INSIGHTFACE_INSTALL_HINT) from None
    try:
        model = get_model(path, providers=onnx_providers(device))
    except Exception as exc:  # onnxruntime and onnx raise several unrelated types for a bad file
        raise UserInputError(f"insightface cannot load {path}: {str(exc).splitlines()[0]}") from None
    if model is None:
        raise UserInputError(f"insightface does not recognise {path} as a model it knows")
    return model


@functools.cache
def dlib_model(kind: str) -> Any:
    """One shared instance per process of a dlib model: hog, cnn, shape5 or resnet."""
    dlib = import_dlib()
    if kind == "hog":
        return dlib.get_frontal_face_detector()
    if kind == "cnn":
        return dlib.cnn_face_detection_model_v1(dlib_model_path("mmod_human_face_detector.dat"))
    if kind == "shape5":
        return dlib.shape_predictor(dlib_model_path("shape_predictor_5_face_landmarks.dat"))
    if kind == "resnet":
        return dlib.face_recognition_model_v1(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat"))
    raise ValueError(f"unknown dlib model {kind!r}")


def embedding_space(family: str, *model_files: str | Path) -> str:
    """The id of the vector space an embedder maps faces into: ``"<family>:<sha256>"``.

    The hash is the model file's SHA-256 (of the files' hashes when there are several), so two
    embedders share cached vectors and generator-space checks only when they run the same weights.
    """
    digests = [file_sha256(f) for f in model_files]
    digest = digests[0] if len(digests) == 1 else hashlib.sha256(" ".join(digests).encode()).hexdigest()
    return f"{family}:{digest}"


def split_spec(spec: ComponentSpec) -> tuple[str, dict[str, Any]]:
    """``"dlib"`` or ``{"name": "dlib", ...options}`` -> (name, options)."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        options = dict(spec)
        return options.pop("name"), options
    raise UserInputError(f"expected a component name or a mapping with a 'name' key, got {spec!r}")


_lock = threading.Lock()
_detectors: dict[str, Detector] = {}
_embedders: dict[str, Embedder] = {}


def _key(name: str, options: dict[str, Any]) -> str:
    return json.dumps([name, options], sort_keys=True, default=str)


def get_detector(spec: ComponentSpec) -> Detector:
    """The process-wide detector for ``spec`` (built on first use)."""
    from facesynth.faces import DETECTORS

    name, options = split_spec(spec)
    key = _key(name, options)
    with _lock:
        if key not in _detectors:
            _detectors[key] = DETECTORS.create(name, **options)
        return _detectors[key]


def get_embedder(spec: ComponentSpec) -> Embedder:
    """The process-wide embedder for ``spec`` (built on first use)."""
    from facesynth.faces import load_embedder

    name, options = split_spec(spec)
    key = _key(name, options)
    with _lock:
        if key not in _embedders:
            _embedders[key] = load_embedder(name, **options)
        return _embedders[key]


def onnx_providers(device: str = "auto") -> list[str]:
    """onnxruntime providers: CUDA when asked for or available ("auto"), else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise UserInputError(
            "device 'cuda' asked for but onnxruntime has no CUDA provider; install onnxruntime-gpu"
        )
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@functools.cache
def onnx_session(path: str, device: str = "auto") -> Any:
    """A cached onnxruntime session for the model file at ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    threads = os.environ.get("FACESYNTH_ONNX_THREADS")
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(path, sess_options=options, providers=onnx_providers(device))
    except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
        raise UserInputError(f"cannot load ONNX model {path}: {str(exc).splitlines()[0]}") from None


def resolve_model_file(model: str, pack_files: tuple[str, ...], how_to_get: str) -> str:
    """Find a model file: a path to the file, or a folder (e.g. an insightface pack) holding one of
    ``pack_files``, or a Hub ``repo_id/file.onnx`` already in the local Hugging Face cache."""
    path = Path(os.path.expanduser(model))
    if path.is_file():
        return str(path)
    if path.is_dir():
        for name in pack_files:
            if (path / name).is_file():
                return str(path / name)
        raise ModelNotFoundError(f"no {' or '.join(pack_files)} in {path}; {how_to_get}")
    parts = model.split("/")
    if len(parts) == 3 and not model.startswith((".", "/", "~")):
        repo_id, filename = "/".join(parts[:2]), parts[2]
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return hf_hub_download(repo_id, filename, local_files_only=True)
        except LocalEntryNotFoundError:
            raise ModelNotFoundError(
                f"model file {model} is not in the Hugging Face cache; run: hf download {repo_id} {filename}"
            ) from None
        except Exception as exc:  # e.g. an invalid repo id, an unreadable cache: say which
            raise ModelNotFoundError(
                f"cannot get model file {model} from the Hugging Face cache: {exc.__class__.__name__}: "
                f"{' '.join(str(exc).split())[:200]}"
            ) from None
    raise ModelNotFoundError(f"model file {path} not found; {how_to_get}")
