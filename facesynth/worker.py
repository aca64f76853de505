"""What one process loads once to run units: the recipe, the bank, the generator and the filters.

``Worker`` turns (identity, attempt) jobs into candidates (seed, varied vector, prompt), renders
them with the generator, and makes the dataset row of each accepted or rejected candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesynth.encoding import EXTENSIONS, ImageEncoder
from facesynth.filtering import score_columns
from facesynth.interfaces import BankConditionedGenerator, Candidate, Filter, Generator, RefinesIdentities
from facesynth.recipe import Recipe
from facesynth.rounds import UnitPlan
from facesynth.schema import dataset_features, rejected_features
from facesynth.seeds import identity_seed, image_prompt, image_seed


@dataclass
class Worker:
    """Everything one process needs to run units of one output folder; built once per process."""

    out: Path
    recipe: Recipe
    bank_vectors: np.ndarray
    plan: UnitPlan
    generator: Generator | None  # None when refiltering an existing dataset
    filters: list[Filter]
    variation: Any

    def __post_init__(self) -> None:
        generator_columns = self.generator.score_columns if self.generator is not None else ()
        self.columns = [*generator_columns, *score_columns(self.filters)]
        self.features = dataset_features(self.columns)
        self.rejected_features = rejected_features(self.columns)
        # Identities refined by the generator (its record per identity); their bank rows change in a copy.
        refines = isinstance(self.generator, RefinesIdentities) and self.generator.refines_identities
        self.refined: dict[int, dict[str, float]] | None = {} if refines else None
        if refines:
            self.bank_vectors = np.array(self.bank_vectors, dtype=np.float32)
        out = self.recipe.output
        self.encoder = ImageEncoder(out.image_format, out.quality, self.encode_processes())

    def encode_processes(self) -> int:
        """The recipe's ``writer.encode_processes``, with ``auto`` resolved for this generator's device."""
        setting = self.recipe.writer.encode_processes
        if setting != "auto":
            return setting
        device = self.generator.describe().get("device") if self.generator is not None else None
        return 2 if str(device).startswith("cuda") else 0

    def refine(self, identities: np.ndarray) -> None:
        """Let the generator refine, once each, the bank vectors of ``identities`` (seeded per identity)."""
        assert self.refined is not None and isinstance(self.generator, RefinesIdentities)
        todo = [int(i) for i in np.unique(identities) if int(i) not in self.refined]
        if todo:
            seeds = [identity_seed(self.recipe.seed, i) for i in todo]
            vectors, records = self.generator.refine_identities(self.bank_vectors[todo], seeds)
            self.bank_vectors[todo] = vectors
            self.refined.update(zip(todo, records, strict=True))

    def candidates(self, jobs: Sequence[tuple[int, int]]) -> list[Candidate]:
        """Candidates for (identity, attempt) jobs: seed, varied vector and prompt of each."""
        seed = self.recipe.seed
        identities = np.array([i for i, _ in jobs], dtype=np.int64)
        attempts = np.array([a for _, a in jobs], dtype=np.int64)
        if self.refined is not None:
            self.refine(identities)
        vectors, cosines = self.variation.apply(self.bank_vectors, identities, attempts, seed)
        prompts = self.recipe.variations.prompts
        return [
            Candidate(
                identity=i,
                attempt=a,
                seed=image_seed(seed, i, a),
                vector=vectors[k],
                prompt=image_prompt(prompts, seed, i, a) if prompts else None,
                variation_cosine=float(cosines[k]),
                scores=dict(self.refined[i]) if self.refined is not None else {},
            )
            for k, (i, a) in enumerate(jobs)
        ]

    def render(self, candidates: Sequence[Candidate]) -> None:
        vectors = np.stack([c.vector for c in candidates])
        prompts = [c.prompt or "" for c in candidates] if candidates[0].prompt is not None else None
        seeds = [c.seed for c in candidates]
        if isinstance(self.generator, BankConditionedGenerator):  # e.g. negative-identity guidance
            identities = [c.identity for c in candidates]
            images = self.generator.generate_in_bank(vectors, seeds, identities, self.bank_vectors, prompts)
        else:
            images = self.generator.generate(vectors, seeds, prompts)
        for candidate, image in zip(candidates, images, strict=True):
            candidate.image = image
        if self.generator.score_columns:
            for candidate, scores in zip(candidates, self.generator.image_scores(), strict=True):
                candidate.scores.update(scores)

    def rows(self, accepted: Sequence[Candidate]) -> list[dict[str, Any]]:
        """The dataset rows of accepted candidates (labels are assigned at finalize), encoded together."""
        out = self.recipe.output
        encoded = self.encoder.encode([self.stored_image(c) for c in accepted])
        rows = []
        for c, data in zip(accepted, encoded, strict=True):
            stem = c.source.rsplit(".", 1)[0] if c.source else f"{c.identity:07d}_{c.attempt:04d}"
            row = {
                # re-encoded: the name says the new format
                "image": {"bytes": data, "path": f"{stem}.{EXTENSIONS[out.image_format]}"},
                "label": -1,
                "identity": c.identity,
                "attempt": c.attempt,
                "seed": c.seed,
                "prompt": c.prompt,
                "variation_cosine": c.variation_cosine,
            }
            row.update({col: c.scores.get(col, float("nan")) for col in self.columns})
            rows.append(row)
        return rows

    def stored_image(self, c: Candidate) -> Any:
        """What a row stores: the aligned face crop (``writer.store: aligned``, when a face filter made one)
        or the generated image."""
        from PIL import Image

        if self.recipe.writer.store == "aligned" and c.face is not None and c.face.aligned is not None:
            return Image.fromarray(c.face.aligned)
        return c.image

    def rejected_row(self, c: Candidate) -> dict[str, Any]:
        row = {
            "identity": c.identity,
            "attempt": c.attempt,
            "seed": c.seed,
            "rejected_by": c.rejected_by,
            "reason": c.reason,
        }
        row.update({col: c.scores.get(col, float("nan")) for col in self.columns})
        return row
