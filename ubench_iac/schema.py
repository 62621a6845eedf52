"""JSON Schemas generated from the stack models."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from ubench_iac.models import Recipe, Stack, TargetConfig

SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"


@cache
def stack_schema() -> dict[str, Any]:
    """Return the JSON Schema of a stack file."""
    schema = Stack.model_json_schema()
    return {"$schema": SCHEMA_URI, "$id": "ubench:stack", **schema}


@cache
def recipe_schema() -> dict[str, Any]:
    """Return the JSON Schema of a recipe file."""
    schema = Recipe.model_json_schema()
    return {"$schema": SCHEMA_URI, "$id": "ubench:recipe", **schema}


@cache
def profile_schema() -> dict[str, Any]:
    """Return the JSON Schema of a cluster profile: target settings."""
    schema = TargetConfig.model_json_schema()
    return {"$schema": SCHEMA_URI, "$id": "ubench:profile", **schema}


def dump(schema: dict[str, Any]) -> str:
    """Serialise a schema the way the checked-in files are written."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
