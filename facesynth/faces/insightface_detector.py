"""insightface's own SCRFD detector, called directly (``pip install facesynth[insightface]``).

Same options and output as the ``scrfd`` detector, which reimplements it; the tests check that
both give the same faces on the same ONNX file.
"""

from __future__ import annotations

import numpy as np

from facesynth.errors import UserInputError
from facesynth.faces.align import pad_and_scale, to_rgb
from facesynth.faces.models import insightface_model, resolve_model_file
from facesynth.faces.scrfd import HOW_TO_GET, PACK_FILES, SCRFDDetector
from facesynth.interfaces import Face


class InsightFaceDetector:
    """SCRFD through ``insightface.model_zoo.get_model`` on a local ONNX file or pack folder."""

    class Options(SCRFDDetector.Options):
        """The ``scrfd`` detector's options, so a recipe can switch between the two."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()
        self.path = resolve_model_file(self.options.model, PACK_FILES, HOW_TO_GET)
        self.model = insightface_model(self.path, self.options.device)
        if getattr(self.model, "taskname", None) != "detection":
            raise UserInputError(f"detector model {self.path} is not a face detector for insightface")
        size = self.options.input_size
        self.model.prepare(
            0, input_size=(size, size), det_thresh=self.options.threshold, nms_thresh=self.options.nms_iou
        )

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image, best score first; boxes and landmarks in image pixels."""
        padded, _, border = pad_and_scale(to_rgb(image), self.options.pad, 0)
        boxes, marks = self.model.detect(np.ascontiguousarray(padded[:, :, ::-1]))  # insightface takes BGR
        return [
            Face(
                box=(boxes[i, :4] - border).astype(np.float32),
                landmarks=(marks[i] - border).astype(np.float32),
                score=float(boxes[i, 4]),
            )
            for i in range(len(boxes))
        ]
