"""Reads a raw TandemDeployment spec into the models of `tandem_operator.spec`, naming every bad
field.

The API server validates specs against the CRD (generated from the same models) before the
operator sees them; the operator validates again because a spec can reach it from an older CRD,
or from a mock server in tests, and because some checks (the router's policy loader, the shared
autoscaling policy's defaults) only the operator can make.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from tandem_operator.spec import NAME_RULE, DeploymentSpec
from tandem_operator.spec.errors import spec_error


def parse_spec(raw: Any, name: str, default_image: str | None) -> DeploymentSpec:
    """Reads and validates a TandemDeployment's spec; raises ValueError naming the bad field."""
    if not NAME_RULE.holds(name):
        raise ValueError(f"{NAME_RULE.message}, got {name!r}")
    try:
        spec = DeploymentSpec.model_validate(_plain(raw if raw is not None else {}),
                                             context={"name": name})
    except ValidationError as error:
        raise spec_error(error) from None
    if spec.image is None:
        if not default_image:
            raise ValueError("spec.image is required (the operator was started without "
                             "--worker-image)")
        spec = spec.model_copy(update={"image": default_image})
    return spec


def _plain(value: Any) -> Any:
    # kopf hands over mapping views; the strict models read plain dicts and lists.
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
