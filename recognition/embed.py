"""Embedding eval sets with a recognition model, as insightface's ``verification.test()`` does.

The API::

    load_model(spec, arch=None, device="auto") -> Embedder   # run folder, backbone .pth + arch, or .onnx
    torch_embedder(module, device="auto") -> Embedder         # any nn.Module: [N,3,112,112] -> [N,d]
    embed_eval_set(model, evalset, batch_size=64, progress=False) -> (original, flipped)   # raw [2N, d]
    evaluate(model, evalsets, batch_size=64, progress=False) -> {name: VerificationResult}
    verification_validator(paths, batch_size=64) -> validate(module) -> {"lfw_acc": ..., "avg_acc": ...}

An ``Embedder`` is any callable taking a float32 batch [B, 3, 112, 112] (RGB, (x/255 - 0.5)/0.5) and
returning its raw embeddings [B, d]. Each image and its horizontal flip are embedded separately;
``verification.evaluate_raw`` sums the two, L2-normalises and runs the protocol. Batches are cut
as insightface cuts them: full batches, the last one ending at the last image (it overlaps the one
before), so a model whose numerics depend on the batch sees the same batches.

Models:

- a ``facesynth train`` run folder: ``train.yaml`` (its ``model`` section names the backbone) and
  ``model.safetensors`` (arcface_torch's state-dict layout);
- an arcface_torch backbone file (``model.pt`` / ``backbone.pth``: a state dict) with its architecture
  name (``r18``, ``r34``, ``r50``, ``r100``, ``r200``); read with ``torch.load(weights_only=True)``;
- an ONNX recogniser taking [N, 3, 112, 112] RGB: a ``facesynth train`` export, an arcface_torch ONNX
  export, or an insightface pack folder (``w600k_r50.onnx`` of buffalo_l, ``glintr100.onnx`` of
  antelopev2); MXNet-converted graphs that normalise inside get raw pixels, as insightface feeds them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from facesynth.errors import FacesynthError, ModelNotFoundError, UserInputError
from facesynth.recognition.evalsets import EvalSet
from facesynth.recognition.verification import VerificationResult, evaluate_raw

Embedder = Callable[[np.ndarray], np.ndarray]

RUN_RECIPE = "train.yaml"
RUN_WEIGHTS = "model.safetensors"
ONNX_PACK_FILES = ("model.onnx", "w600k_r50.onnx", "glintr100.onnx", "arcface.onnx")


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 [B, 112, 112, 3] RGB -> float32 [B, 3, 112, 112] as insightface: ((x / 255) - 0.5) / 0.5."""
    x = images.astype(np.float32).transpose(0, 3, 1, 2)
    return ((x / np.float32(255)) - np.float32(0.5)) / np.float32(0.5)


def batch_ranges(n: int, batch_size: int) -> list[tuple[int, int, int]]:
    """(start, stop, keep_from) per batch, insightface's cut: every batch full, the last one ending at n
    (re-embedding some rows of the one before; rows from ``keep_from`` on are new)."""
    if n <= batch_size:
        return [(0, n, 0)]
    out = []
    for stop in range(batch_size, n + batch_size, batch_size):
        stop = min(stop, n)
        start = stop - batch_size
        out.append((start, stop, batch_size - (stop - (out[-1][1] if out else 0))))
    return out


def embed_eval_set(
    model: Embedder, evalset: EvalSet, batch_size: int = 64, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Raw embeddings [2N, d] (float64, as insightface stores them) of the images and of their flips."""
    from tqdm.auto import tqdm

    n = len(evalset.images)
    ranges = batch_ranges(n, batch_size)
    original: np.ndarray | None = None
    flipped: np.ndarray | None = None
    with tqdm(total=n, desc=f"embedding {evalset.name}", unit="img", disable=not progress) as bar:
        for start, stop, keep in ranges:
            images = evalset.batch(start, stop)
            outputs = []
            for batch in (images, images[:, :, ::-1]):  # the image, then its horizontal flip
                out = np.asarray(model(normalise(batch)))
                if out.ndim != 2 or len(out) != len(batch):
                    raise FacesynthError(f"the model returned {out.shape} for a batch of {len(batch)} images")
                outputs.append(out)
            if original is None or flipped is None:
                original = np.zeros((n, outputs[0].shape[1]))
                flipped = np.zeros((n, outputs[0].shape[1]))
            original[start + keep : stop] = outputs[0][keep:]
            flipped[start + keep : stop] = outputs[1][keep:]
            bar.update(stop - start - keep)
    assert original is not None and flipped is not None
    return original, flipped


def evaluate(
    model: Embedder, evalsets: Iterable[EvalSet], batch_size: int = 64, progress: bool = False
) -> dict[str, VerificationResult]:
    """Embed each eval set (images and flips) and run the protocol; results by eval-set name."""
    results = {}
    for evalset in evalsets:
        original, flipped = embed_eval_set(model, evalset, batch_size, progress)
        results[evalset.name] = evaluate_raw(original, flipped, evalset.issame)
    return results


def verification_validator(
    paths: Iterable[str | Path], batch_size: int = 64
) -> Callable[[Any], dict[str, float]]:
    """For training loops: eval sets loaded and decoded once; ``validate(module)`` embeds them with the
    module on its own device and returns ``{"<set>_acc", "<set>_val", ..., "avg_acc"}`` (accuracies 0..1).
    The module's train/eval mode is restored afterwards."""
    from facesynth.recognition.evalsets import load_eval_set
    from facesynth.recognition.verification import average_accuracy

    sets = [load_eval_set(path).decoded() for path in paths]

    def validate(module: Any) -> dict[str, float]:
        training = module.training
        device = str(next(module.parameters()).device)
        try:
            results = evaluate(torch_embedder(module, device), sets, batch_size)
        finally:
            module.train(training)
        metrics = {}
        for name, result in results.items():
            metrics[f"{name}_acc"] = result.accuracy
            metrics[f"{name}_val"] = result.val
        metrics["avg_acc"] = average_accuracy(results)
        return metrics

    return validate


# ----------------------------------------------------------------------------- models


def _torch_device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"--device {device} asked for but torch sees no CUDA device")
    return torch.device(device)


def torch_embedder(module: Any, device: str = "auto") -> Embedder:
    """A torch module as an Embedder (eval mode, no grad, float32 outputs)."""
    import torch

    target = _torch_device(device)
    module = module.to(target).eval()

    @torch.no_grad()
    def embed(batch: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(np.ascontiguousarray(batch)).to(target)).float().cpu().numpy()

    return embed


def _onnx_device(device: str) -> str:
    return "cuda" if device.startswith("cuda") else device  # onnxruntime picks no GPU index here


def onnx_embedder(path: str | Path, device: str = "auto") -> Embedder:
    """An ONNX recogniser run with onnxruntime (input [N, 3, 112, 112], output [N, d]).

    Graphs that normalise inside (MXNet exports: ``Sub``/``Mul`` nodes first) get raw 0..255 pixels,
    decided as insightface decides it (``faces.arcface_onnx.input_normalisation``); all others get
    the protocol's ((x / 255) - 0.5) / 0.5.
    """
    from facesynth.faces.arcface_onnx import input_normalisation
    from facesynth.faces.models import onnx_session

    session = onnx_session(str(path), device)
    input_name = session.get_inputs()[0].name
    raw_pixels = input_normalisation(str(path)) == (0.0, 1.0)

    def embed(batch: np.ndarray) -> np.ndarray:
        if raw_pixels:  # undo ((x / 255) - 0.5) / 0.5: exact, the pixels are integers
            batch = np.rint(batch * np.float32(127.5) + np.float32(127.5)).astype(np.float32)
        return session.run(None, {input_name: batch})[0].reshape(len(batch), -1)

    return embed


def _iresnet(arch: str, num_features: int, **kw: Any) -> Any:
    from facesynth.recognition.iresnet import ARCHS, iresnet

    if arch not in ARCHS:
        raise UserInputError(f"unknown architecture {arch!r}; --arch is one of {', '.join(ARCHS)}")
    return iresnet(arch, num_features=num_features, **kw)


def _load_strict(module: Any, state: dict[str, Any], source: str, what: str) -> Any:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise UserInputError(f"{source} does not hold a {what} state dict ({detail})") from None
    return module


def load_backbone_file(path: str | Path, arch: str) -> Any:
    """An arcface_torch backbone state dict (``torch.save(backbone.state_dict())``) into our IResNet."""
    import torch

    try:
        state = torch.load(str(path), weights_only=True, map_location="cpu")
    except Exception as exc:  # pickles with code, truncated files: weights_only refuses them
        raise UserInputError(
            f"{path} is not a plain state dict that can be loaded safely ({' '.join(str(exc).split())[:200]})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise UserInputError(f"{path} is not an arcface_torch backbone state dict (no fc.weight)")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DistributedDataParallel
    model = _iresnet(arch, num_features=int(state["fc.weight"].shape[0]))
    return _load_strict(model, state, str(path), f"--arch {arch}")


def load_run(path: str | Path) -> Any:
    """The backbone of a ``facesynth train`` run folder: its recipe's ``model`` section + model.safetensors."""
    import yaml
    from safetensors.torch import load_file

    path = Path(path)
    weights = path / RUN_WEIGHTS
    if not weights.is_file():
        raise ModelNotFoundError(f"{path} has no {RUN_WEIGHTS}: the training run has not finished")
    recipe = yaml.safe_load((path / RUN_RECIPE).read_text()) or {}
    from facesynth.recognition.train import ModelOptions, build_backbone

    options = ModelOptions.model_validate(recipe.get("model") or {})
    backbone = options.backbone
    model = build_backbone(options)  # the same constructor training used (IResNet or IR-SE-50)
    return _load_strict(model, load_file(str(weights)), str(weights), f"{backbone} (from {RUN_RECIPE})")


def load_model(spec: str | Path, arch: str | None = None, device: str = "auto") -> Embedder:
    """The Embedder for MODEL of ``facesynth eval`` (see the module docstring for the three forms)."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / RUN_RECIPE).is_file():
        return torch_embedder(load_run(path), device)
    if path.is_dir():
        for name in ONNX_PACK_FILES:
            if (path / name).is_file():
                return onnx_embedder(path / name, _onnx_device(device))
        raise ModelNotFoundError(
            f"{path} is neither a facesynth train run ({RUN_RECIPE}) nor a folder with "
            f"{' or '.join(ONNX_PACK_FILES)}"
        )
    if not path.is_file():
        raise ModelNotFoundError(
            f"model {path} not found; give a facesynth train run folder, an arcface_torch backbone file "
            "with --arch, or an ONNX recogniser"
        )
    if path.suffix == ".onnx":
        return onnx_embedder(path, _onnx_device(device))
    if arch is None:
        raise UserInputError(
            f"{path}: an arcface_torch backbone file needs its architecture: add --arch r50 (or r18..r200)"
        )
    return torch_embedder(load_backbone_file(path, arch), device)
