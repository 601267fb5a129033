"""Typed reads from a raw custom-resource mapping, with errors that name the offending field.

The API server validates specs against the CRD's OpenAPI schema before the operator sees them;
this reader checks the same rules again (a spec can reach the operator from an older CRD, or from
a mock server in tests) and turns every violation into a ValueError naming the field path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Fields:
    """A view of one mapping in a spec at a dotted path; reading marks keys as known."""

    def __init__(self, raw: Any, path: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ValueError(f"{path}: must be an object, got {type(raw).__name__}")
        self.raw = raw
        self.path = path
        self._read: set[str] = set()

    def has(self, key: str) -> bool:
        """Whether the key is present (and not null)."""
        return self.raw.get(key) is not None

    def obj(self, key: str) -> Fields:
        """A nested mapping (empty when absent)."""
        return Fields(self._take(key), f"{self.path}.{key}")

    def integer(self, key: str, default: int | None, minimum: int | None = None) -> int | None:
        """An integer field, optionally bounded below."""
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{self.path}.{key}: must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise ValueError(f"{self.path}.{key}: must be >= {minimum}, got {value}")
        return value

    def number(self, key: str, default: float | None, positive: bool = False,
            at_most: float | None = None) -> float | None:
        """A number field, optionally > 0 and bounded above."""
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{self.path}.{key}: must be a number, got {value!r}")
        if positive and not value > 0:
            raise ValueError(f"{self.path}.{key}: must be > 0, got {value}")
        if not positive and value < 0:
            raise ValueError(f"{self.path}.{key}: must be >= 0, got {value}")
        if at_most is not None and value > at_most:
            raise ValueError(f"{self.path}.{key}: must be <= {at_most}, got {value}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        """A boolean field."""
        value = self._take(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ValueError(f"{self.path}.{key}: must be true or false, got {value!r}")
        return value

    def text(self, key: str, default: str | None, choices: tuple[str, ...] = ()) -> str | None:
        """A non-empty string field, optionally one of `choices`."""
        value = self._take(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise ValueError(f"{self.path}.{key}: must be a non-empty string, got {value!r}")
        if choices and value not in choices:
            raise ValueError(f"{self.path}.{key}: must be one of {', '.join(choices)}, got {value!r}")
        return value

    def str_map(self, key: str) -> dict[str, str]:
        """A string-to-string mapping (labels, node selectors, env)."""
        value = self._take(key) or {}
        if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ValueError(f"{self.path}.{key}: must map strings to strings")
        return dict(value)

    def str_list(self, key: str) -> list[str]:
        """A list of strings."""
        value = self._take(key) or []
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"{self.path}.{key}: must be a list of strings")
        return list(value)

    def obj_list(self, key: str) -> list[dict[str, Any]]:
        """A list of objects, passed through as they are (tolerations, env entries)."""
        value = self._take(key) or []
        if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
            raise ValueError(f"{self.path}.{key}: must be a list of objects")
        return [dict(item) for item in value]

    def any_obj(self, key: str) -> dict[str, Any]:
        """A free-form object passed through as it is (resources, router policy)."""
        value = self._take(key) or {}
        if not isinstance(value, Mapping):
            raise ValueError(f"{self.path}.{key}: must be an object")
        return dict(value)

    def check_known(self) -> None:
        """Raises if the mapping holds keys that nothing read (typos, fields of another version)."""
        unknown = sorted(set(self.raw) - self._read)
        if unknown:
            raise ValueError(f"{self.path}: unknown field(s) {', '.join(unknown)}")

    def _take(self, key: str) -> Any:
        self._read.add(key)
        return self.raw.get(key)
