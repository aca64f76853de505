"""The recipe: a validated YAML description of one dataset.

Sections are pydantic models with unknown keys forbidden. Component sections (generator,
sampler, filters, variation) are ``{name: ..., <options>}`` mappings whose options are validated
by the component's own ``Options`` model, found through the registries.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, TypeAdapter, ValidationError, create_model, field_validator, model_validator

from facesynth.errors import RecipeError, UserInputError
from facesynth.identity.options import BankOptions
from facesynth.registry import ComponentSpec, Registry, StrictOptions, did_you_mean


class OutputOptions(StrictOptions):
    dir: str | None = None
    image_format: Literal["jpeg", "png", "webp"] = "jpeg"
    quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality")
    shard_size_mb: float = Field(500, gt=0, description="target size of one parquet shard")
    identities_per_unit: int | None = Field(
        None, ge=1, description="identities per work unit (= shard); default from shard_size_mb"
    )


class VariationOptions(StrictOptions):
    images_per_identity: int = Field(50, ge=1)
    min_images_per_identity: int | None = Field(
        None, ge=1, description="identities with fewer accepted images are dropped (default: all)"
    )
    max_attempts_per_identity: int | None = Field(
        None, ge=1, description="generation budget per identity (default: 2x images_per_identity)"
    )
    vary: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="none"))
    prompts: PromptOptions | None = None

    @model_validator(mode="after")
    def _check_counts(self) -> VariationOptions:
        if self.min_images_per_identity is None:
            self.min_images_per_identity = self.images_per_identity
        if self.max_attempts_per_identity is None:
            self.max_attempts_per_identity = 2 * self.images_per_identity
        if self.min_images_per_identity > self.images_per_identity:
            raise ValueError("min_images_per_identity cannot exceed images_per_identity")
        if self.max_attempts_per_identity < self.images_per_identity:
            raise ValueError("max_attempts_per_identity cannot be below images_per_identity")
        return self


class PromptOptions(StrictOptions):
    """Per-image prompts: ``template`` with ``{slot}`` fields, each filled from ``choices[slot]``."""

    template: str
    choices: dict[str, list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_slots(self) -> PromptOptions:
        import string

        slots = {f for _, f, _, _ in string.Formatter().parse(self.template) if f}
        missing = sorted(slots - set(self.choices))
        if missing:
            raise ValueError(f"template slot(s) {missing} have no choices")
        for slot, values in self.choices.items():
            if not values:
                raise ValueError(f"choices.{slot} is empty")
        return self


class WriterOptions(StrictOptions):
    store: Literal["aligned", "full"] = Field(
        "aligned", description="store the aligned face crop (when a face filter ran) or the full image"
    )
    row_group_mb: float = Field(64, gt=0, le=100)
    encode_processes: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="processes that encode images (0: the filter thread does); auto: 0 when the generator "
        "runs on CPU, 2 on a GPU, where the encoding would otherwise slow the thread that drives the model",
    )


class Recipe(StrictOptions):
    """A whole recipe. ``identities`` and ``generator`` may be absent for ``facesynth filter``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = Field(0, ge=0)
    output: OutputOptions = Field(default_factory=OutputOptions)
    identities: BankOptions | None = None
    generator: ComponentSpec | None = None
    variations: VariationOptions = Field(default_factory=VariationOptions)
    filters: list[ComponentSpec] = Field(default_factory=list)
    writer: WriterOptions = Field(default_factory=WriterOptions)
    executor: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="local"))

    @field_validator("filters")
    @classmethod
    def _unique_filters(cls, filters: list[ComponentSpec]) -> list[ComponentSpec]:
        names = [f.name for f in filters]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"filter '{name}' is listed twice")
        return filters

    def bank_options(self) -> BankOptions:
        assert self.identities is not None
        return self.identities

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)

    def content_hash(self) -> str:
        """Hash of everything that determines the rows (not where or how fast they are made).

        Options are default-filled and local files enter by content: see ``facesynth.fingerprint``.
        """
        from facesynth.fingerprint import recipe_hash

        return recipe_hash(self)


VariationOptions.model_rebuild()


# ----------------------------------------------------------------------------- loading


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path of a YAML document to its 1-based line."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, str(key.value))
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, str(i)))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def _where(loc: tuple[Any, ...], lines: dict[tuple[str, ...], int], source: str) -> str:
    path = tuple(str(p) for p in loc)
    for n in range(len(path), -1, -1):
        if path[:n] in lines and n > 0:
            return f"{source}:{lines[path[:n]]}: "
    return f"{source}: "


def _error_message(err: dict[str, Any], prefix: tuple[Any, ...], allowed: list[str]) -> tuple[tuple, str]:
    loc = tuple(p for p in (*prefix, *err["loc"]) if p not in ("function-after",))
    key = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        return loc, f"unknown key '{key}'{did_you_mean(str(loc[-1]), allowed)}"
    if err["type"] == "missing":
        return loc, f"missing required key '{key}'"
    msg = err["msg"].removeprefix("Value error, ")
    return loc, f"{key}: {msg}" if key else msg


def _fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed next to the last key of ``loc`` (for did-you-mean hints)."""
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        model = next(
            (a for a in getattr(annotation, "__args__", (annotation,)) if hasattr(a, "model_fields")), None
        )
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _raise_validation(exc: ValidationError, model: Any, prefix: tuple, lines: dict, source: str) -> None:
    err = exc.errors()[0]
    loc, msg = _error_message(err, prefix, _fields_at(model, tuple(err["loc"])))
    raise RecipeError(f"{_where(loc, lines, source)}{msg}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (value parsed as YAML; list items by index: ``filters.0.x=1``)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set expects key=value, got '{item}'")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node: Any = data
        parts = key.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError(f"--set {key}: '{part}' is not an index of a {len(node)}-item list")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if not isinstance(node.get(part), dict | list):
                        node[part] = {}
                    node = node[part]
            else:
                raise RecipeError(f"--set {key}: '{'.'.join(parts[:i])}' is not a mapping")
    return data


def _validate_components(recipe: Recipe, lines: dict, source: str) -> None:
    from facesynth.filters import FILTERS
    from facesynth.generators import GENERATORS
    from facesynth.identity import VARIATIONS

    specs: list[tuple[tuple, Registry, ComponentSpec]] = [
        (("variations", "vary"), VARIATIONS, recipe.variations.vary),
        *((("filters", i), FILTERS, spec) for i, spec in enumerate(recipe.filters)),
    ]
    if recipe.generator is not None:
        specs.append((("generator",), GENERATORS, recipe.generator))
    from facesynth.executors import EXECUTORS

    specs.append((("executor",), EXECUTORS, recipe.executor))
    for prefix, registry, spec in specs:
        try:
            model = registry.options_model(spec.name)
        except UserInputError as exc:
            raise RecipeError(f"{_where((*prefix, 'name'), lines, source)}{prefix[0]}: {exc}") from None
        try:
            model.model_validate(spec.options)
        except ValidationError as exc:
            _raise_validation(exc, model, prefix, lines, source)
    generator = GENERATORS.get(recipe.generator.name) if recipe.generator is not None else None
    if recipe.variations.prompts is not None and generator is not None and not generator.uses_prompts:
        raise RecipeError(
            f"{_where(('variations', 'prompts'), lines, source)}variations.prompts: generator "
            f"'{recipe.generator.name}' takes no text prompts (use ipadapter-faceid for prompt control)"
        )
    bank = recipe.identities
    if (
        bank is not None
        and generator is not None
        and generator.input_scale == "raw"
        and _unit_sampler(bank.sampler)
    ):
        raise RecipeError(
            f"{_where(('identities', 'sampler'), lines, source)}identities.sampler: generator "
            f"'{recipe.generator.name}' takes raw, un-normalised features (their norm matters) but this "
            "sampler draws unit vectors; use sampler {name: gaussian, reference: FEATURES.npy, normalize: false}"
        )


def _unit_sampler(spec: ComponentSpec | None) -> bool:
    """Whether an identity sampler certainly draws unit vectors (sphere, images, normalised gaussian)."""
    if spec is None:
        return False
    normalized_gaussian = spec.name == "gaussian" and spec.options.get("normalize", True) is not False
    return spec.name in ("sphere", "images") or normalized_gaussian


def parse_recipe(
    text: str, source: str = "<recipe>", overrides: list[str] | None = None, need_generation: bool = True
) -> Recipe:
    """Parse and validate recipe YAML text; errors name the key path and the line."""
    try:
        data = yaml.safe_load(text)
        lines = _line_index(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{source}{line}: invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping of sections, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        _raise_validation(exc, Recipe, (), lines, source)
    if need_generation:
        for section in ("identities", "generator"):
            if getattr(recipe, section) is None:
                raise RecipeError(f"{source}: missing required section '{section}'")
    _validate_components(recipe, lines, source)
    return recipe


def load_recipe(
    recipe: str | Path | dict[str, Any] | Recipe,
    overrides: list[str] | None = None,
    need_generation: bool = True,
) -> Recipe:
    """Load a recipe from a path, a YAML string's dict, or pass a ``Recipe`` through."""
    if isinstance(recipe, Recipe):
        recipe = recipe.to_dict()
    if isinstance(recipe, dict):
        return parse_recipe(yaml.safe_dump(recipe, sort_keys=False), "<recipe>", overrides, need_generation)
    path = Path(recipe)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {path}") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc.__class__.__name__}") from None
    return parse_recipe(text, str(path), overrides, need_generation)


def recipe_json_schema() -> dict[str, Any]:
    """JSON Schema of recipes, for editors: every component section is a union of the registered
    components' options, discriminated by ``name`` (nested detectors and embedders too)."""
    from facesynth.executors import EXECUTORS
    from facesynth.faces import DETECTORS, EMBEDDERS
    from facesynth.filters import FILTERS
    from facesynth.generators import GENERATORS
    from facesynth.identity import SAMPLERS, VARIATIONS

    schema = Recipe.model_json_schema()
    defs = schema.setdefault("$defs", {})

    def union(registry: Registry) -> dict[str, Any]:
        """``name`` alone, or ``{name: ..., <that component's options>}``."""
        names = registry.names()
        specs = [
            create_model(
                f"{registry.kind}_{name}".replace("-", "_"),
                __base__=registry.options_model(name),
                name=(Literal[name], Field(description=f"{registry.kind} '{name}'")),  # type: ignore[valid-type]
            )
            for name in names
        ]
        adapter = TypeAdapter(Annotated[Union[tuple(specs)], Field(discriminator="name")])  # noqa: UP007
        one_of = adapter.json_schema(ref_template="#/$defs/{model}")
        defs.update(one_of.pop("$defs", {}))
        return {"anyOf": [{"type": "string", "enum": names}, one_of]}

    nested = {"detector": union(DETECTORS), "embedder": union(EMBEDDERS)}
    properties = schema["properties"]
    properties["generator"] = {"anyOf": [union(GENERATORS), {"type": "null"}]}
    properties["filters"] = {"type": "array", "items": union(FILTERS)}
    properties["executor"] = union(EXECUTORS)
    defs["VariationOptions"]["properties"]["vary"] = union(VARIATIONS)
    defs["BankOptions"]["properties"]["sampler"] = {"anyOf": [union(SAMPLERS), {"type": "null"}]}
    for definition in defs.values():
        for key, value in nested.items():
            if key in definition.get("properties", {}):
                definition["properties"][key] = value
    return schema
