"""Validation of custom resources against a CRD's OpenAPI v3 schema, as the API server does it.

The CRD's `openAPIV3Schema` is JSON Schema draft 4 in its keywords (boolean exclusiveMinimum,
oneOf/anyOf), so `jsonschema.Draft4Validator` checks it. Like `kubectl apply` (server-side strict
field validation), unknown fields are errors: objects that list `properties` and do not preserve
unknown fields get `additionalProperties: false`. `api_server_errors` adds what the API server
checks beyond JSON Schema: the CEL rules (`x-kubernetes-validations`, evaluated with cel-python)
and the uniqueness of `x-kubernetes-list-type: map` keys.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema

JUNCTORS = ("allOf", "anyOf", "oneOf", "not")


def validator(crd: dict[str, Any]) -> jsonschema.Draft4Validator:
    """A validator for whole custom resources of the CRD's (single) version."""
    schema = copy.deepcopy(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    _forbid_unknown_fields(schema)
    schema["properties"]["metadata"] = {"type": "object"}  # the API server checks metadata itself
    return jsonschema.Draft4Validator(schema)


def structural_problems(schema: dict[str, Any], path: str = "") -> list[str]:
    """Why a schema is not structural (the API server rejects such a CRD); empty when it is."""
    problems = []
    is_free = schema.get("x-kubernetes-preserve-unknown-fields") or schema.get(
        "x-kubernetes-int-or-string")
    if "type" not in schema and not is_free:
        problems.append(f"{path or '/'}: no type")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{path}: both properties and additionalProperties")
    if schema.get("type") == "array" and "items" not in schema:
        problems.append(f"{path}: array without items")
    for name, child in (schema.get("properties") or {}).items():
        problems += structural_problems(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            problems += structural_problems(schema[key], f"{path}[{key}]")
    for junctor in JUNCTORS:
        branches = schema.get(junctor, [])
        for branch in branches if isinstance(branches, list) else [branches]:
            problems += _junctor_problems(schema, branch, f"{path}.{junctor}")
    return problems


def _junctor_problems(parent: dict[str, Any], branch: dict[str, Any], path: str) -> list[str]:
    # Inside logical junctors only value validations may appear, about fields declared outside;
    # int-or-string fields are the exception: anyOf [{type: integer}, {type: string}].
    allowed = {"type"} if parent.get("x-kubernetes-int-or-string") else set()
    problems = [f"{path}: sets {key}" for key in ("type", "description", "default",
                                                  "additionalProperties", "nullable")
                if key in branch and key not in allowed]
    outside = set(parent.get("properties") or {})
    problems += [f"{path}: names undeclared {name}" for name in
                 set(branch.get("properties") or {}) | set(branch.get("required") or [])
                 if name not in outside]
    return problems


def _forbid_unknown_fields(schema: dict[str, Any]) -> None:
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema.setdefault("additionalProperties", False)
    for child in (schema.get("properties") or {}).values():
        _forbid_unknown_fields(child)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _forbid_unknown_fields(schema[key])


def cel_rules(schema: dict[str, Any]) -> list[str]:
    """Every CEL rule in the schema."""
    rules = [entry["rule"] for entry in schema.get("x-kubernetes-validations", [])]
    for child in (schema.get("properties") or {}).values():
        rules += cel_rules(child)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            rules += cel_rules(schema[key])
    return rules


def api_server_errors(crd: dict[str, Any], resource: dict[str, Any]) -> list[str]:
    """Why the API server would refuse the resource: schema, list-map keys and CEL rules."""
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator(crd).iter_errors(resource)]
    if errors:  # the API server evaluates CEL only on objects that pass the schema
        return errors
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return _semantic_errors(schema, resource, "")


def _semantic_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    errors = []
    for entry in schema.get("x-kubernetes-validations", []):
        program = _CEL.program(_CEL.compile(entry["rule"]))
        result = program.evaluate({"self": celpy.json_to_cel(value)})
        if not (isinstance(result, celpy.celtypes.BoolType) and result):  # errors refuse too
            errors.append(f"{path or '/'}: {entry['message']} ({entry['rule']})")
    if isinstance(value, dict):
        for name, child in (schema.get("properties") or {}).items():
            if name in value:
                errors += _semantic_errors(child, value[name], f"{path}.{name}")
        if isinstance(schema.get("additionalProperties"), dict):
            for name, child in value.items():
                errors += _semantic_errors(schema["additionalProperties"], child, f"{path}.{name}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        keys = [tuple(item.get(k) for k in schema.get("x-kubernetes-list-map-keys", []))
                for item in value]
        if schema.get("x-kubernetes-list-type") == "map" and len(set(keys)) != len(keys):
            errors.append(f"{path}: duplicate entries for keys {keys}")
        for index, item in enumerate(value):
            errors += _semantic_errors(schema["items"], item, f"{path}[{index}]")
    return errors


_CEL = celpy.Environment()
