"""The ``fiqa-onnx`` filter: a learned face image quality model, supplied by the user as ONNX.

Works with a model that maps an aligned face to a quality score (eDifFIQA, CR-FIQA style heads)
or to an embedding whose norm is its quality (MagFace style): pick ``output: scalar`` or ``norm``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

from facesynth.faces.align import align, to_rgb
from facesynth.faces.models import onnx_session, resolve_model_file
from facesynth.interfaces import Candidate, FilterContext
from facesynth.registry import StrictOptions


class FIQAFilter:
    """Scores each aligned face with an ONNX quality model; rejects scores below ``min_score``."""

    name = "fiqa-onnx"
    dataset_pass = None  # no check across units
    score_columns = ("fiqa_score",)

    class Options(StrictOptions):
        model: str  # path to the .onnx file (or hub "repo/id/file.onnx" already downloaded)
        input_size: int = 112  # the aligned crop is resized to this square size
        mean: float | list[float] = 127.5  # input = (pixel - mean) / std, per channel if lists
        std: float | list[float] = 127.5
        channels: Literal["rgb", "bgr"] = "rgb"
        layout: Literal["nchw", "nhwc"] = "nchw"
        output: Literal["scalar", "norm"] = "scalar"  # norm: L2 norm of an embedding (MagFace)
        output_index: int = 0
        min_score: float | None = None  # None: score only, reject nothing
        batch_size: int = 32
        device: Literal["auto", "cpu", "cuda"] = "auto"

    def __init__(self, options: Options) -> None:
        self.options = options
        how = "give model: a path to your FIQA .onnx file (e.g. an exported eDifFIQA or MagFace)"
        self.session = onnx_session(resolve_model_file(options.model, (), how), options.device)
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    def preprocess(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        o = self.options
        batch = np.stack(
            [cv2.resize(c, (o.input_size, o.input_size), interpolation=cv2.INTER_AREA) for c in crops]
        )
        if o.channels == "bgr":
            batch = batch[..., ::-1]
        batch = (batch.astype(np.float32) - np.float32(o.mean)) / np.float32(o.std)
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2) if o.layout == "nchw" else batch)

    def score(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Quality score per crop (float32 [N])."""
        o = self.options
        step = self.fixed_batch or o.batch_size
        scores = []
        for start in range(0, len(crops), step):
            part = list(crops[start : start + step])
            real = len(part)
            part += [part[-1]] * ((self.fixed_batch or real) - real)  # fixed-batch models: pad the tail
            out = np.asarray(self.session.run(None, {self.input_name: self.preprocess(part)})[o.output_index])
            out = out.reshape(len(part), -1)[:real]
            scores.append(np.linalg.norm(out, axis=1) if o.output == "norm" else out[:, 0])
        return np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32)

    def crop(self, candidate: Candidate) -> np.ndarray:
        face = candidate.face
        if face is not None and face.aligned is not None:
            return face.aligned
        rgb = to_rgb(candidate.image)
        if face is not None:
            return align(rgb, face.landmarks, self.options.input_size)
        return rgb  # no face filter before this one: score the whole image

    def __call__(self, batch: Sequence[Candidate], context: FilterContext) -> None:
        todo = []
        for c in batch:
            if not c.accepted:
                continue
            if c.image is None:
                c.reject(self.name, "unreadable image")
            else:
                todo.append(c)
        if not todo:
            return
        for c, value in zip(todo, self.score([self.crop(c) for c in todo]), strict=True):
            c.scores["fiqa_score"] = float(value)
            if self.options.min_score is not None and not value >= self.options.min_score:
                c.reject(self.name, f"fiqa score {value:.3g} < {self.options.min_score:g}")

    def accept(self, candidate: Candidate, context: FilterContext) -> None:
        """Stateless."""
