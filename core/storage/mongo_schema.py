"""The MongoDB results collection's ``$jsonSchema`` validator, derived from the one field table
(:data:`core.domain.results.FIELDS`), as SQLite's columns are."""

from __future__ import annotations

from typing import Any

from core.domain.results import FIELDS, Field

_BSON = {
    "text": "string",
    "int": ["int", "long"],
    "float": "double",
    "bool": "bool",
    "time": "date",
    "scores": "object",
    "map": "object",
    "box": "array",
}


def _property(spec: Field) -> dict[str, Any]:
    """One field's ``$jsonSchema`` rule, from the field table (null allowed where the field is optional)."""
    kinds = _BSON[spec.kind] if isinstance(_BSON[spec.kind], list) else [_BSON[spec.kind]]
    rule: dict[str, Any] = {"bsonType": kinds if spec.required else [*kinds, "null"]}
    if spec.choices:
        rule = {"enum": [*spec.choices] if spec.required else [*spec.choices, None]}
    if spec.pattern is not None:
        rule["pattern"] = f"^{spec.pattern}$"
    if spec.minimum is not None:
        rule["minimum"] = spec.minimum
    if spec.maximum is not None:
        rule["maximum"] = spec.maximum
    if spec.kind == "box":
        rule.update(minItems=4, maxItems=4)
    return rule


def _validator() -> dict[str, Any]:
    """MongoDB's second line of defence, derived from :data:`~core.domain.results.FIELDS` (``id`` is ``_id``)."""
    name = {"id": "_id"}
    properties = {name.get(spec.name, spec.name): _property(spec) for spec in FIELDS}
    properties["sections"] = {"bsonType": "array"}  # a series' sections live inside its document
    required = [name.get(spec.name, spec.name) for spec in FIELDS if spec.required]
    return {"$jsonSchema": {"bsonType": "object", "required": required, "properties": properties}}


VALIDATOR = _validator()
