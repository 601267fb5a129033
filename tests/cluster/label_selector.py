"""Kubernetes label selectors as the API server evaluates `?labelSelector=` on lists and watches.

Equality-based (`a=b`, `a==b`, `a!=b`) and set-based (`a in (x,y)`, `a notin (x)`, `a`, `!a`)
requirements, comma-separated, all of which must hold.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

Requirement = Callable[[Mapping[str, str]], bool]
_SET = re.compile(r"^\s*([^\s!=,()]+)\s+(in|notin)\s+\(([^()]*)\)\s*$")
_EQUALITY = re.compile(r"^\s*([^\s!=,()]+)\s*(==|=|!=)\s*([^\s!=,()]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)([^\s!=,()]+)\s*$")


def parse_selector(text: str) -> list[Requirement]:
    """The requirements of a selector string; raises ValueError on a malformed one."""
    requirements: list[Requirement] = []
    for term in re.split(r",(?![^()]*\))", text.strip()) if text.strip() else []:
        requirements.append(_requirement(term))
    return requirements


def selects(requirements: list[Requirement], labels: Mapping[str, str] | None) -> bool:
    """Whether every requirement holds for the labels."""
    labels = labels or {}
    return all(requirement(labels) for requirement in requirements)


def _requirement(term: str) -> Requirement:
    if match := _SET.match(term):
        key, operator = match.group(1), match.group(2)
        values = {value.strip() for value in match.group(3).split(",")}
        if operator == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _EQUALITY.match(term):
        key, operator, value = match.groups()
        if operator == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _EXISTS.match(term):
        is_negated, key = match.group(1) == "!", match.group(2)
        return lambda labels: (key in labels) != is_negated
    raise ValueError(f"unable to parse requirement {term!r} of a label selector")
