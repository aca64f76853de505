"""insightface's SCRFD face detector, run with onnxruntime and decoded with numpy (no insightface).

The ONNX file (``det_10g.onnx`` in insightface's buffalo_l pack, ``scrfd_10g_bnkps.onnx`` in
antelopev2) takes a [1, 3, H, W] RGB image normalised as (x - 127.5) / 128 and returns 9 outputs:
scores, box distances and 5-point offsets for the strides 8, 16 and 32, two anchors per grid cell.
Boxes are (left, top, right, bottom) distances from the anchor centre and landmarks are offsets
from it, both in units of the stride.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from facesynth.errors import UserInputError
from facesynth.faces.align import to_rgb
from facesynth.faces.models import onnx_session, resolve_model_file
from facesynth.interfaces import Face
from facesynth.registry import StrictOptions

STRIDES = (8, 16, 32)
ANCHORS = 2
PACK_FILES = ("det_10g.onnx", "scrfd_10g_bnkps.onnx", "scrfd_2.5g_bnkps.onnx", "scrfd_500m_bnkps.onnx")
HOW_TO_GET = (
    "give a path to an SCRFD .onnx file or an insightface pack folder such as ~/.insightface/models/buffalo_l "
    "(insightface downloads it on first use; or get buffalo_l.zip from the insightface releases on GitHub)"
)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first (ties: earlier first).

    Widths and heights count pixels inclusively (``x1 - x0 + 1``), as insightface's SCRFD does,
    so run it on boxes in image pixels.
    """
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        overlap = w * h / (areas[i] + areas[rest] - w * h)
        order = rest[overlap <= iou]
    return keep


def anchor_centres(height: int, width: int, stride: int) -> np.ndarray:
    """[(H/stride) * (W/stride) * ANCHORS, 2] anchor centres (x, y), row-major, anchors innermost."""
    ys, xs = np.mgrid[: height // stride, : width // stride]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, ANCHORS, axis=0)


def decode(outputs: list[np.ndarray], height: int, width: int, threshold: float) -> tuple[np.ndarray, ...]:
    """SCRFD's 9 raw outputs -> (boxes [K, 4], scores [K], landmarks [K, 5, 2]) above ``threshold``."""
    if len(outputs) != 9:
        raise UserInputError(
            f"SCRFD model has {len(outputs)} outputs, expected 9 (a model with keypoints, *_bnkps)"
        )
    outputs = [o[0] if o.ndim == 3 else o for o in outputs]  # some exports keep the batch axis
    boxes, scores, marks = [], [], []
    for level, stride in enumerate(STRIDES):
        score = outputs[level].reshape(-1)
        distance = outputs[level + 3].reshape(-1, 4) * stride
        offsets = outputs[level + 6].reshape(-1, 5, 2) * stride
        centres = anchor_centres(height, width, stride)
        if len(centres) != len(score):
            raise UserInputError(
                f"SCRFD output for stride {stride} has {len(score)} rows, expected {len(centres)}"
            )
        hit = score >= threshold
        c = centres[hit]
        boxes.append(np.concatenate([c - distance[hit, :2], c + distance[hit, 2:]], axis=1))
        scores.append(score[hit])
        marks.append(offsets[hit] + c[:, None, :])
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(marks)


class SCRFDDetector:
    """SCRFD face detector from a local ONNX file or insightface pack folder."""

    class Options(StrictOptions):
        model: str = "~/.insightface/models/buffalo_l"  # .onnx file, pack folder, or hub "repo/id/file.onnx"
        input_size: int = 640  # square network input; a fixed-size model's own size wins
        threshold: float = 0.5
        nms_iou: float = 0.4
        pad: float = 0.25  # border added on every side (x longer side) so tight crops are found
        device: Literal["auto", "cpu", "cuda"] = "auto"

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()
        self.path = resolve_model_file(self.options.model, PACK_FILES, HOW_TO_GET)
        self.session = onnx_session(self.path, self.options.device)
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        fixed = isinstance(shape[2], int) and isinstance(shape[3], int)
        self.input_hw = (shape[2], shape[3]) if fixed else (self.options.input_size, self.options.input_size)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image, best score first; boxes and landmarks in image pixels."""
        image = to_rgb(image)
        border = int(round(self.options.pad * max(image.shape[:2])))
        padded = cv2.copyMakeBorder(
            image, border, border, border, border, cv2.BORDER_CONSTANT, value=(0, 0, 0)
        )
        height, width = self.input_hw
        # Letterbox as insightface does: keep the aspect ratio (sizes truncated), paste at the
        # top-left of a black network input; the scale is the one of the height.
        if padded.shape[0] / padded.shape[1] > height / width:
            new_height, new_width = height, int(height / (padded.shape[0] / padded.shape[1]))
        else:
            new_height, new_width = int(width * (padded.shape[0] / padded.shape[1])), width
        scale = new_height / padded.shape[0]
        canvas = np.zeros((height, width, 3), dtype=np.float32)
        canvas[:new_height, :new_width] = cv2.resize(padded, (new_width, new_height))
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outputs = self.session.run(None, {self.input_name: blob})
        boxes, scores, marks = decode(outputs, height, width, self.options.threshold)
        boxes, marks = boxes / scale, marks / scale  # padded-image pixels, where NMS counts pixels
        return [
            Face(
                box=(boxes[i] - border).astype(np.float32),
                landmarks=(marks[i] - border).astype(np.float32),
                score=float(scores[i]),
            )
            for i in nms(boxes, scores, self.options.nms_iou)
        ]
