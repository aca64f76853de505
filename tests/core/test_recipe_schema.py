"""`facesynth schema`: the recipe's JSON Schema, with every component's options for editors."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from facesynth.cli import main
from facesynth.recipe import recipe_json_schema

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def schema() -> dict:
    return recipe_json_schema()


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(schema: dict, recipe: Path) -> None:
    jsonschema.validate(yaml.safe_load(recipe.read_text()), schema)


def test_component_options_are_a_union_discriminated_by_name(schema: dict) -> None:
    generator = schema["properties"]["generator"]["anyOf"][0]["anyOf"][1]
    from facesynth.generators import GENERATORS

    mapping = set(generator["discriminator"]["mapping"])
    assert {"arc2face", "idiff-face", "ipadapter-faceid", "tiny", "vec2face"} <= mapping
    assert mapping == set(GENERATORS.names())  # plug-ins too (other tests register test generators)
    assert "steps" in schema["$defs"]["generator_arc2face"]["properties"]
    filters = schema["properties"]["filters"]["items"]["anyOf"][1]["discriminator"]["mapping"]
    assert "quality" in filters and "min_blur" in schema["$defs"]["filter_quality"]["properties"]
    # nested: an embedder inside a filter's options, a detector inside an embedder's
    embedder = schema["$defs"]["filter_identity"]["properties"]["embedder"]["anyOf"][1]
    assert set(embedder["discriminator"]["mapping"]) == {"arcface-onnx", "dlib", "insightface"}
    assert "detector" in schema["$defs"]["embedder_arcface_onnx"]["properties"]
    assert "count" in schema["$defs"]["BankOptions"]["properties"]  # the identities section, typed

    smoke = yaml.safe_load((ROOT / "recipes" / "smoke.yaml").read_text())
    for section, key in (("generator", "stepz"), ("identities", "cuont")):
        bad = json.loads(json.dumps(smoke))
        bad[section][key] = 1
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    bad = json.loads(json.dumps(smoke))
    bad["filters"][0]["min_blur"] = "sharp"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_schema_command_prints_it(capsys: pytest.CaptureFixture, schema: dict) -> None:
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == schema
