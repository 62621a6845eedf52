"""Load a stack file: read, parse YAML, check the JSON Schema, build models.

Every problem becomes a ``StackError`` naming the file, line, column, field and
fix; all the problems found in one stage are reported together.
"""

from __future__ import annotations

import dataclasses
import difflib
import getpass
import graphlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import pydantic
from loguru import logger

from ubench_iac.errors import StackError, StackErrors
from ubench_iac.models import Recipe, Runtime, Service, Stack, TargetConfig
from ubench_iac.paths import data_dir
from ubench_iac.schema import profile_schema, recipe_schema, stack_schema
from ubench_iac.yamlload import Document, format_path, read_yaml
from ubench_iac.yamlload import Path as ValuePath

M = TypeVar("M", bound=pydantic.BaseModel)

MERGED_MAPPINGS = (
    "environment",
    "ports",
    "outputs",
    "resources",
    "health",
    "metrics",
    "params",
    "slurm",
)
"""Service fields merged key by key with the recipe's; other fields replace it."""


@dataclasses.dataclass(frozen=True)
class Origin:
    """Source of a service field: its document and value path."""

    document: Document
    path: ValuePath

    def error(self, sub: ValuePath, message: str, fix: str | None = None) -> StackError:
        return self.document.error((*self.path, *sub), message, fix)


@dataclasses.dataclass(frozen=True)
class ServiceDefinition:
    """A service with its recipe merged in, and where each field came from."""

    name: str
    service: Service
    origins: Mapping[str, Origin]
    """Top-level field name to where it was written; '' for the service itself."""

    def error(
        self, field_path: ValuePath, message: str, fix: str | None = None
    ) -> StackError:
        """Build an error pointing at the file and line that set ``field_path``."""
        field = str(field_path[0]) if field_path else ""
        origin = self.origins.get(field) or self.origins[""]
        return origin.error(field_path, message, fix)


@dataclasses.dataclass(frozen=True)
class LoadedStack:
    """A validated stack file with its services resolved against recipes."""

    path: Path
    stack: Stack
    document: Document
    services: Mapping[str, ServiceDefinition]
    order: tuple[str, ...]
    """Service names in dependency order: every service after its dependencies."""

    @property
    def name(self) -> str:
        return self.stack.name


def load_stack(
    path: str | Path, variables: Mapping[str, str] | None = None
) -> LoadedStack:
    """Load, validate and resolve the stack file at ``path``.

    ``variables`` override the stack's ``variables`` (from ``--var NAME=VALUE``).
    """
    path = Path(path)
    document = _read_document(path)
    stack = _validate(document, stack_schema(), Stack)
    unknown = sorted(set(variables or {}) - set(stack.variables))
    if unknown:
        raise StackError(
            f"--var {unknown[0]} is not a variable of this stack",
            file=str(path),
            fix=f"declare it under 'variables:' or use one of: "
            f"{', '.join(sorted(stack.variables)) or '(none)'}",
        )
    if variables:
        merged_vars = {**stack.variables, **variables}
        stack = stack.model_copy(update={"variables": merged_vars})

    stack = _apply_profile(stack, document, path.parent)
    recipes = _load_recipes(stack, document, path.parent)
    services = {
        name: _merge_service(name, service, recipes, document)
        for name, service in stack.services.items()
    }
    order = _dependency_order(services)
    return LoadedStack(path, stack, document, services, order)


def _read_document(path: Path) -> Document:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StackError(
            "file not found", file=str(path), fix="check the path of the stack file"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StackError(f"cannot read the file: {exc}", file=str(path)) from exc
    document = read_yaml(text, str(path))
    if not isinstance(document.data, dict):
        raise document.error(
            (),
            "the file must contain a YAML mapping",
            "start from the example in the README: name:, then services:",
        )
    return document


def _validate(document: Document, schema: dict[str, Any], model: type[M]) -> M:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(
        validator.iter_errors(document.data), key=lambda error: list(error.path)
    )
    if errors:
        raise StackErrors([_schema_error(document, error) for error in errors])
    try:
        return model.model_validate(document.data)
    except pydantic.ValidationError as exc:
        raise StackErrors(
            [_model_error(document, detail) for detail in exc.errors()]
        ) from None


def _schema_error(
    document: Document,
    error: jsonschema.ValidationError,
    description: str | None = None,
) -> StackError:
    """Translate one jsonschema error into a StackError with a fix."""
    path: ValuePath = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    description = schema.get("description") or description

    if error.validator in ("anyOf", "oneOf") and error.context:
        # A union such as 'str | EnvValue': report the branch that got furthest.
        best = _deepest(error.context)
        if best is not None:
            return _schema_error(document, best, description)

    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        instance = error.instance if isinstance(error.instance, dict) else {}
        extras = [key for key in instance if key not in allowed]
        key = extras[0] if extras else "?"
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean '{close[0]}'?" if close else ""
        fix = f"{hint} Known fields: {', '.join(allowed)}".strip()
        return document.error((*path, key), f"unknown field '{key}'", fix)

    if error.validator == "required":
        return document.error(path, error.message, "add the missing field")

    if error.validator == "type":
        return document.error(
            path,
            _type_message(document, path, error),
            "; ".join(
                fix
                for fix in (
                    _quote_fix(document, path),
                    _expected_fix(error, description),
                )
                if fix
            ),
        )

    if error.validator == "enum":
        allowed_values = [str(choice) for choice in error.validator_value]  # type: ignore[union-attr]
        choices = ", ".join(allowed_values)
        close = difflib.get_close_matches(str(error.instance), allowed_values, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return document.error(
            path, f"invalid value {error.instance!r}", f"{hint}use one of: {choices}"
        )

    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "minItems"):
        return document.error(path, error.message, _expected_fix(error, description))

    if error.validator in ("anyOf", "oneOf"):
        return document.error(
            path,
            f"invalid value {error.instance!r}",
            description or _quote_fix(document, path),
        )

    if error.validator == "pattern":
        return document.error(
            path,
            f"invalid value {error.instance!r}",
            f"use a value matching {error.validator_value}",
        )
    return document.error(path, error.message, description)


def _deepest(
    errors: Iterable[jsonschema.ValidationError],
) -> jsonschema.ValidationError | None:
    """Pick the sub-error that got furthest into the value, skipping 'null'."""
    candidates = [
        error
        for error in errors
        if not (error.validator == "type" and error.validator_value == "null")
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda error: len(error.absolute_path))


def _type_message(
    document: Document, path: ValuePath, error: jsonschema.ValidationError
) -> str:
    expected = error.validator_value
    if isinstance(expected, list):
        expected = " or ".join(expected)
    mark = document.marks.get(path)
    if mark is not None and mark.text is not None and mark.tag:
        kind = mark.tag.rsplit(":", 1)[-1]
        if kind in ("float", "int") and mark.text != str(error.instance):
            return (
                f"YAML reads {mark.text} as the number {error.instance!r}, but "
                f"{expected} is expected here"
            )
    return f"expected {expected}, got {_json_type(error.instance)} {error.instance!r}"


_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "nothing",
}


def _expected_fix(error: jsonschema.ValidationError, description: str | None) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    raw_kinds = schema.get("type", [])
    kinds = (
        [str(kind) for kind in raw_kinds]
        if isinstance(raw_kinds, list)
        else [str(raw_kinds)]
    )
    expected = " or ".join(_TYPE_WORDS.get(kind, kind) for kind in kinds)
    expected = expected or "a valid value"
    bounds = [
        f"{word} {schema[key]}"
        for key, word in (("minimum", "at least"), ("maximum", "at most"))
        if key in schema
    ]
    fix = f"give {expected}" + (f" {' and '.join(bounds)}" if bounds else "")
    if description:
        fix += f" ({description.rstrip('.')})"
    return fix


def _quote_fix(document: Document, path: ValuePath) -> str | None:
    mark = document.marks.get(path)
    if mark is None or mark.text is None:
        return None
    if mark.tag and mark.tag.endswith(("float", "int", "bool")):
        return f"quote it to keep the text as written: '{mark.text}'"
    return None


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__.replace("dict", "mapping").replace("list", "list")


def _model_error(document: Document, detail: Any) -> StackError:
    loc = [part for part in detail["loc"] if not str(part).startswith("function")]
    if "[key]" in loc:
        # A mapping key failed its pattern: point at the key itself.
        loc = loc[: loc.index("[key]")]
    path = tuple(loc)
    message = str(detail["msg"]).removeprefix("Value error, ")
    if detail.get("type") == "string_pattern_mismatch":
        pattern = detail.get("ctx", {}).get("pattern", "")
        return document.error(
            path,
            f"invalid name {detail['input']!r}",
            f"use a name matching {pattern}",
        )
    return document.error(path, message, None)


def builtin_profiles() -> list[str]:
    """Return the names of the cluster profiles shipped with ubench."""
    return sorted(path.stem for path in data_dir("profiles").glob("*.yaml"))


def _apply_profile(stack: Stack, document: Document, base: Path) -> Stack:
    """Fill the target settings the stack leaves unset from its cluster profile.

    A profile is a built-in name (``meluxina``) or a YAML file path relative to
    the stack, holding target fields. ``{account}`` and ``{user}`` in its
    ``image_cache`` are replaced by the target's account and the user name.
    """
    config = stack.target
    if config.profile is None:
        return stack
    candidates = [
        base / config.profile,
        data_dir("profiles") / f"{config.profile}.yaml",
    ]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise document.error(
            ("target", "profile"),
            f"unknown cluster profile '{config.profile}'",
            f"use a file path or one of: {', '.join(builtin_profiles())}",
        )
    profile_document = _read_document(path)
    defaults = _validate(profile_document, profile_schema(), TargetConfig)
    merged = {
        **defaults.model_dump(exclude_unset=True),
        **config.model_dump(exclude_unset=True),
    }
    cache = merged.get("image_cache")
    if isinstance(cache, str) and "{" in cache:
        merged["image_cache"] = cache.replace(
            "{account}", str(merged.get("account") or "ACCOUNT")
        ).replace("{user}", getpass.getuser())
    return stack.model_copy(update={"target": TargetConfig.model_validate(merged)})


def _load_recipes(
    stack: Stack, document: Document, base: Path
) -> dict[str, tuple[Recipe, Origin]]:
    recipes: dict[str, tuple[Recipe, Origin]] = {}
    for name, entry in stack.recipes.items():
        if isinstance(entry, Recipe):
            recipes[name] = (entry, Origin(document, ("recipes", name)))
            continue
        recipe_path = (base / entry).resolve()
        if not recipe_path.is_file():
            raise document.error(
                ("recipes", name),
                f"recipe file {entry!r} not found (looked for {recipe_path})",
                "give a path relative to the stack file",
            )
        recipes[name] = _read_recipe_file(recipe_path)
    return recipes


def _read_recipe_file(path: Path) -> tuple[Recipe, Origin]:
    document = _read_document(path)
    recipe = _validate(document, recipe_schema(), Recipe)
    return recipe, Origin(document, ())


def builtin_recipes() -> list[str]:
    """Return the names of the recipes shipped with ubench."""
    return sorted(path.stem for path in data_dir("recipes").glob("*.yaml"))


def _find_recipe(
    name: str, recipes: Mapping[str, tuple[Recipe, Origin]]
) -> tuple[Recipe, Origin] | None:
    if name in recipes:
        return recipes[name]
    builtin = data_dir("recipes") / f"{name}.yaml"
    if builtin.is_file():
        return _read_recipe_file(builtin)
    return None


def _merge_service(
    name: str,
    service: Service,
    recipes: Mapping[str, tuple[Recipe, Origin]],
    document: Document,
) -> ServiceDefinition:
    here = Origin(document, ("services", name))
    origins: dict[str, Origin] = {"": here}
    merged: dict[str, Any] = {}
    if service.recipe is not None:
        found = _find_recipe(service.recipe, recipes)
        if found is None:
            known = sorted({*recipes, *builtin_recipes()})
            close = difflib.get_close_matches(service.recipe, known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise here.error(
                ("recipe",),
                f"unknown recipe '{service.recipe}'",
                f"{hint}define it under 'recipes:' or use one of: {', '.join(known)}",
            )
        recipe, recipe_origin = found
        merged = recipe.model_dump(exclude_unset=True, mode="python")
        origins.update({field: recipe_origin for field in merged})

    overrides = service.model_dump(exclude_unset=True, mode="python")
    overrides.pop("recipe", None)
    for field, value in overrides.items():
        if field in MERGED_MAPPINGS and isinstance(merged.get(field), dict):
            merged[field] = {**merged[field], **value}
        else:
            merged[field] = value
        origins[field] = here

    try:
        resolved = Service.model_validate(merged)
    except pydantic.ValidationError as exc:
        detail = exc.errors()[0]
        raise here.error(tuple(detail["loc"]), detail["msg"], None) from None
    definition = ServiceDefinition(name, resolved, origins)
    _check_service(definition)
    return definition


def _check_service(definition: ServiceDefinition) -> None:
    service = definition.service
    runtime = effective_runtime(service)
    if runtime is not Runtime.HOST and not service.image:
        raise definition.error(
            ("runtime",),
            f"runtime '{runtime}' needs an image",
            "set 'image', or use 'runtime: host'",
        )
    if service.image and _floating_tag(service.image):
        origin = definition.origins.get("image") or definition.origins[""]
        mark = origin.document.mark((*origin.path, "image"))
        where = f"{origin.document.file}:{mark.line}" if mark else origin.document.file
        logger.warning(
            "{}: image {} of service '{}' has no pinned tag, so runs may get "
            "different images; pin a version tag",
            where,
            service.image,
            definition.name,
        )
    # Without a command, apptainer runs the image's own runscript.
    if not service.command and runtime is not Runtime.APPTAINER:
        raise definition.error(
            ("command",),
            f"service '{definition.name}' has no command",
            "set 'command' in the service or its recipe",
        )
    nodes = service.resources.nodes if service.resources else 1
    endpoint_node = service.slurm.endpoint_node if service.slurm else None
    if endpoint_node is not None and endpoint_node >= nodes:
        raise definition.error(
            ("slurm", "endpoint_node"),
            f"endpoint_node {endpoint_node} is not a node of a {nodes}-node job",
            f"use an index from 0 to {nodes - 1}",
        )
    if service.args and isinstance(service.command, str):
        raise definition.error(
            ("args",),
            "'args' needs 'command' as a list; a string command is a bash script",
            "write the arguments into the script, or make 'command' a list",
        )


def _floating_tag(image: str) -> bool:
    """Return whether a docker:// image has no tag, or the moving tag 'latest'."""
    if not image.startswith("docker://") or "@sha256:" in image:
        return False
    name = image.removeprefix("docker://").rsplit("/", 1)[-1]
    return ":" not in name or name.endswith(":latest")


def effective_runtime(service: Service) -> Runtime:
    """Return the runtime, defaulting to apptainer when an image is set."""
    if service.runtime is not None:
        return service.runtime
    return Runtime.APPTAINER if service.image else Runtime.HOST


def _dependency_order(services: Mapping[str, ServiceDefinition]) -> tuple[str, ...]:
    graph: dict[str, Iterable[str]] = {}
    for name, definition in services.items():
        depends_on = definition.service.depends_on or []
        for dependency in depends_on:
            if dependency == name:
                raise definition.error(
                    ("depends_on",),
                    f"service '{name}' depends on itself",
                    "remove it from its own depends_on",
                )
            if dependency not in services:
                close = difflib.get_close_matches(dependency, list(services), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise definition.error(
                    ("depends_on",),
                    f"unknown service '{dependency}' in depends_on",
                    f"{hint}use one of: {', '.join(services)}",
                )
        graph[name] = depends_on
    sorter = graphlib.TopologicalSorter(graph)
    try:
        return tuple(sorter.static_order())
    except graphlib.CycleError as exc:
        cycle = list(exc.args[1])
        first = services[cycle[0]]
        raise first.error(
            ("depends_on",),
            f"dependency cycle: {' -> '.join(reversed(cycle))}",
            "remove one of these depends_on entries",
        ) from None


__all__ = [
    "LoadedStack",
    "ServiceDefinition",
    "builtin_recipes",
    "effective_runtime",
    "format_path",
    "load_stack",
]
