"""The CRD's OpenAPI schema of `spec`, derived from the models' JSON Schema.

Pydantic writes JSON Schema (draft 2020-12) with `$ref`s, titles, defaults and `anyOf [X, null]`
for optional fields; the API server takes only *structural* schemas (every node typed and
inlined, no junctor that sets types, draft-4 style exclusive bounds). This turns the one into the
other. Defaults are dropped on purpose: the operator applies them (a tier's pool inherits the
shared pool key by key, so a default stored by the API server would hide the shared value).
"""

from __future__ import annotations

from typing import Any

from tandem_operator.spec.deployment import DeploymentSpec

Schema = dict[str, Any]
_DROPPED = ("title", "default")


def spec_schema() -> Schema:
    """The structural schema of a TandemDeployment's `spec`."""
    schema = DeploymentSpec.model_json_schema(by_alias=True, mode="validation")
    return structural(schema, schema.pop("$defs", {}))


def structural(node: Schema, defs: dict[str, Schema]) -> Schema:
    """One JSON Schema node as a structural OpenAPI v3 schema node (refs inlined)."""
    node = dict(node)
    if "allOf" in node and len(node["allOf"]) == 1:  # a described $ref, in older pydantic
        node = {**node.pop("allOf")[0], **node}
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**structural(target, defs), **node}
    for key in _DROPPED:
        node.pop(key, None)
    node = _without_null(node, defs)
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node[bound], bool):
            node[inclusive], node[bound] = node[bound], True
    if node.get("additionalProperties") is True:  # dict[str, Any]: a free-form object
        del node["additionalProperties"]
        node["x-kubernetes-preserve-unknown-fields"] = True
    if "properties" in node:
        node.pop("additionalProperties", None)  # unknown fields: the API server prunes or refuses
        node["properties"] = {name: structural(child, defs)
                              for name, child in node["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = structural(node[key], defs)
    return node


def _without_null(node: Schema, defs: dict[str, Schema]) -> Schema:
    # `X | None` is "X or absent" in a spec: the API server drops nulls that are not nullable.
    branches = node.get("anyOf")
    if branches is None or node.get("x-kubernetes-int-or-string"):
        return node
    kept = [branch for branch in branches if branch != {"type": "null"}]
    if len(kept) != 1:
        raise ValueError(f"no structural form for anyOf {branches}")
    rest = {key: value for key, value in node.items() if key != "anyOf"}
    return {**structural(kept[0], defs), **rest}
