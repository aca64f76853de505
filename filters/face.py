"""The ``face`` filter: exactly one face per image, aligned onto the ArcFace template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from facesynth.faces.align import align, main_face, to_rgb
from facesynth.faces.models import get_detector
from facesynth.interfaces import Candidate, Face, FilterContext
from facesynth.registry import StrictOptions


def width(face: Face) -> float:
    return float(face.box[2] - face.box[0])


class FaceFilter:
    """Detects faces, rejects images with none or several, and stores the aligned crop."""

    name = "face"
    dataset_pass = None  # no check across units
    score_columns = ("face_score", "face_count")

    class Options(StrictOptions):
        detector: str | dict[str, Any] = "dlib"  # "dlib", "scrfd" or {name: scrfd, model: ...}
        size: Literal[112, 128, 224] = 112  # side of the aligned crop (ArcFace template, scaled)
        min_score: float | None = None  # the face's detector score must reach this (None: detector's own)
        max_faces: int = 1
        # Another detection counts as a second face only when it is confident and not tiny, so
        # weak false positives and far-away background faces do not reject a good portrait.
        other_face_score: float = 0.5
        other_face_size: float = 0.3  # minimum width relative to the main face

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()
        self.detector = get_detector(self.options.detector)

    def check(self, image: Any) -> tuple[Face | None, int, str | None]:
        """(aligned main face or None, face count, rejection reason or None) for one image."""
        o = self.options
        try:
            rgb = to_rgb(image)
        except Exception as exc:  # e.g. a lazily decoded file that turns out truncated
            return None, 0, f"unreadable image: {exc.__class__.__name__}: {' '.join(str(exc).split())}"
        faces = self.detector.detect(rgb)
        if o.min_score is not None:
            faces = [f for f in faces if f.score >= o.min_score]
        face = main_face(faces, o.other_face_score)
        if face is None:
            return None, 0, "no face"
        others = [
            f
            for f in faces
            if f is not face and f.score >= o.other_face_score and width(f) >= o.other_face_size * width(face)
        ]
        count = 1 + len(others)
        face.aligned = align(rgb, face.landmarks, o.size)
        if count > o.max_faces:
            return face, count, f"{count} faces"
        return face, count, None

    def __call__(self, batch: Sequence[Candidate], context: FilterContext) -> None:
        for candidate in batch:
            if not candidate.accepted:
                continue
            if candidate.image is None:
                candidate.scores.update(face_score=np.nan, face_count=0.0)
                candidate.reject(self.name, "unreadable image")
                continue
            face, count, reason = self.check(candidate.image)
            candidate.scores["face_score"] = face.score if face is not None else np.nan
            candidate.scores["face_count"] = float(count)
            if reason is None:
                candidate.face = face
            else:
                candidate.reject(self.name, reason)

    def accept(self, candidate: Candidate, context: FilterContext) -> None:
        """Stateless."""
