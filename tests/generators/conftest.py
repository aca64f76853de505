"""Tiny random checkpoints in the published layouts, built once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facesynth.generators import load_generator
from facesynth.generators.tiny import build_tiny_checkpoints, build_tiny_ipadapter, build_tiny_lcm_lora


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(arc2face_dir, sd15_base_dir) of the tiny random model."""
    return build_tiny_checkpoints(tmp_path_factory.mktemp("tiny-checkpoints"))


@pytest.fixture(scope="session")
def arc2face(tiny_dirs: tuple[Path, Path]):
    model, base = tiny_dirs
    return load_generator("arc2face", model=str(model), base_model=str(base), size=64, steps=3, batch_size=8)


@pytest.fixture(scope="session")
def ipadapter_dir(tiny_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ip-adapter")
    build_tiny_ipadapter(tiny_dirs[1], folder)
    return folder


@pytest.fixture(scope="session")
def ipadapter(tiny_dirs: tuple[Path, Path], ipadapter_dir: Path):
    return load_generator(
        "ipadapter-faceid",
        base_model=str(tiny_dirs[1]),
        adapter=str(ipadapter_dir),
        size=64,
        steps=3,
        batch_size=8,
    )


@pytest.fixture(scope="session")
def faceid_lora_dir(tiny_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same adapter as ``ipadapter_dir`` plus its FaceID LoRA, as in ip-adapter-faceid_sd15.bin."""
    folder = tmp_path_factory.mktemp("ip-adapter-lora")
    build_tiny_ipadapter(tiny_dirs[1], folder, loras=True)
    return folder


@pytest.fixture(scope="session")
def lcm_lora_dir(tiny_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder like latent-consistency/lcm-lora-sdv1-5, for the tiny Arc2Face UNet."""
    folder = tmp_path_factory.mktemp("lcm-lora")
    build_tiny_lcm_lora(tiny_dirs[0] / "arc2face", folder)
    return folder


@pytest.fixture
def vectors() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(8, 512)).astype(np.float32)
