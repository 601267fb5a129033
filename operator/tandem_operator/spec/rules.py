"""The base of every spec model, and cross-field rules declared once for the CRD and the parser.

A `Rule` holds a CEL expression (which the API server evaluates through the CRD's
`x-kubernetes-validations`) next to the Python predicate that the operator evaluates on the parsed
model, with one message for both, so the two cannot drift apart field by field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator
from pydantic.alias_generators import to_camel

E = TypeVar("E")
Choice = Annotated[E, Strict(False)]  # enums: values come as strings from YAML and JSON


@dataclass(frozen=True, slots=True)
class Rule:
    """A cross-field rule: CEL for the API server, a predicate for the operator, one message."""

    cel: str
    message: str
    holds: Callable[[Any], bool]
    field: str | None = None  # the field the message is about, appended to the error's path

    def schema(self) -> dict[str, str]:
        """The rule as one entry of `x-kubernetes-validations`."""
        return {"rule": self.cel, "message": self.message}


def rules_of(model: type[BaseModel]) -> list[Rule]:
    """The rules a model class declares, its bases' included."""
    return [rule for cls in reversed(model.__mro__) for rule in cls.__dict__.get("RULES", ())]


def _add_rules(schema: dict[str, Any], model: type[BaseModel]) -> None:
    # The rules become the schema's CEL validations, next to any extra keywords (oneOf).
    rules = rules_of(model)
    if rules:
        schema["x-kubernetes-validations"] = [rule.schema() for rule in rules]
    schema.update(getattr(model, "SCHEMA_EXTRA", {}))


class SpecModel(BaseModel):
    """A frozen, strict spec object read by its camelCase CRD names; unknown fields are errors."""

    model_config = ConfigDict(alias_generator=to_camel, extra="forbid", frozen=True, strict=True,
                              validate_by_name=False, json_schema_extra=_add_rules)

    RULES: ClassVar[tuple[Rule, ...]] = ()
    SCHEMA_EXTRA: ClassVar[dict[str, Any]] = {}  # schema keywords beyond the fields (oneOf)

    @model_validator(mode="after")
    def _check_rules(self) -> SpecModel:
        for rule in rules_of(type(self)):
            if not rule.holds(self):
                raise RuleBroken(rule)
        return self


class FieldError(ValueError):
    """A check of a whole model that fails about one field below it (`where`: the path to it)."""

    def __init__(self, where: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.where = where


class RuleBroken(FieldError):
    """A broken `Rule`, naming the field the rule is about."""

    def __init__(self, rule: Rule) -> None:
        super().__init__((rule.field,) if rule.field else (), rule.message)


def described(description: str, **kwargs: Any) -> Any:
    """A field with a description for the CRD (kwargs as for pydantic's Field)."""
    return Field(description=description, **kwargs)
