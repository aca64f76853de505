"""IResNet reproduces insightface arcface_torch's backbone: same keys/shapes, same outputs on same weights."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from facesynth.recognition.iresnet import ARCHS, IResNet, iresnet

FIXTURES = Path(__file__).parent / "fixtures"


def _fixture_module():
    """The script that produced the fixture from arcface_torch's code: its weight filler and input."""
    spec = importlib.util.spec_from_file_location(
        "make_arcface_torch_fixture", FIXTURES / "make_arcface_torch_fixture.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def published() -> dict:
    return json.loads((FIXTURES / "arcface_torch_iresnet.json").read_text())


@pytest.mark.parametrize("name", ["r18", "r100"])
def test_state_dict_layout_equals_arcface_torch(published: dict, name: str) -> None:
    ours = [[k, list(v.shape)] for k, v in iresnet(name).state_dict().items()]
    assert ours == published[f"{name}_keys"]


def test_arcface_torch_weights_give_the_published_output(published: dict) -> None:
    make = _fixture_module()
    model = iresnet("r18")
    model.load_state_dict(make.fill_weights(model.state_dict()), strict=True)
    model.eval()
    with torch.no_grad():
        out = model(make.make_input())
    expected = torch.tensor(published["r18_output"])
    # Same torch build, same op order: only float summation order may differ.
    assert (out - expected).abs().max().item() < 1e-3 * expected.abs().max().item()


def test_tiny_model_runs_and_freezes_the_feature_scale() -> None:
    model = IResNet(layers=(1, 1, 1, 1), width=8, num_features=32)
    out = model(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, 32)
    assert not model.features.weight.requires_grad  # arcface_torch keeps the embedding BN's scale at 1
    assert set(ARCHS) == {"r18", "r34", "r50", "r100", "r200"}


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="r50"):
        iresnet("r51")
