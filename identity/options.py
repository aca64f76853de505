"""The recipe's ``identities:`` section, typed: light to import (no torch), so the recipe can use it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from facesynth.errors import UserInputError
from facesynth.identity import SAMPLERS
from facesynth.registry import ComponentSpec, StrictOptions


class SpreadOptions(StrictOptions):
    iterations: int = Field(50, ge=1, le=10_000, description="cap on repulsion steps")
    step: float = Field(0.05, gt=0, le=1, description="step size on the sphere")
    neighbours: int = Field(8, ge=1, le=256, description="neighbours each vector is pushed away from")
    temperature: float = Field(0.02, gt=0, description="softmax temperature over neighbour cosines")


class BankOptions(StrictOptions):
    """The recipe's ``identities:`` section."""

    count: int = Field(ge=1, description="number of identities in the bank")
    sampler: ComponentSpec | None = Field(
        None, description="where candidates come from: sphere, gaussian, file or images (name or {name: ...})"
    )
    max_cosine: float = Field(0.3, gt=-1, le=1, description="largest allowed cosine between two identities")
    gallery: Path | None = Field(None, description="real-identity vectors (.npy, .safetensors, .parquet)")
    max_gallery_cosine: float = Field(
        0.3, gt=-1, le=1, description="candidates at or above this cosine to a gallery vector are rejected"
    )
    candidate_budget: int | None = Field(None, ge=1, description="most candidates drawn (default 20 x count)")
    block_size: int = Field(
        8192, ge=16, le=1 << 16, description="largest candidate block (blocks grow to it as the bank grows)"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    spread: SpreadOptions | None = Field(None, description="optional repulsion that spreads the bank out")
    bank: Path | None = Field(None, description="use this prebuilt bank file instead of sampling")

    @field_validator("sampler")
    @classmethod
    def _sampler_options(cls, spec: ComponentSpec | None) -> ComponentSpec | None:
        if spec is None:
            return spec
        try:
            SAMPLERS.parse_options(spec.name, spec.options)
        except UserInputError as exc:
            raise ValueError(str(exc)) from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"sampler '{spec.name}' option {where}: {first['msg']}") from None
        return spec

    @model_validator(mode="after")
    def _source(self) -> BankOptions:
        if (self.sampler is None) == (self.bank is None):
            raise ValueError(
                "give either a sampler (to draw a new bank) or bank: FILE (a prebuilt one), not both"
            )
        return self

    @property
    def budget(self) -> int:
        return self.candidate_budget or 20 * self.count
