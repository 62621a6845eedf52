"""The checked-in JSON Schemas match the models they are generated from."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from ubench_iac.schema import dump, recipe_schema, stack_schema

SCHEMAS = Path(__file__).parent.parent / "schemas"


@pytest.mark.parametrize(
    ("name", "generate"),
    [("stack.schema.json", stack_schema), ("recipe.schema.json", recipe_schema)],
)
def test_schema_file_matches_models(name: str, generate: object) -> None:
    assert callable(generate)
    checked_in = (SCHEMAS / name).read_text()
    assert checked_in == dump(generate()), (
        f"schemas/{name} is out of date: run 'ubench schema' and commit the result"
    )


def test_schema_is_valid_draft_2020_12() -> None:
    schema = json.loads((SCHEMAS / "stack.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)


def test_schema_validates_demo_stack() -> None:
    import yaml

    schema = json.loads((SCHEMAS / "stack.schema.json").read_text())
    demo = Path(__file__).parent.parent / "stacks" / "local-demo.yaml"
    jsonschema.validate(yaml.safe_load(demo.read_text()), schema)
