"""Validation of rendered manifests against the Kubernetes OpenAPI schemas (kubernetes-validate)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

# A recent release that kubernetes-validate ships schemas for.
KUBERNETES_VERSION = "1.34.0"

# Kinds served by CRDs: kubernetes-validate has no schema for them (checked by their own tests).
CUSTOM_KINDS = {"TandemDeployment", "ServiceMonitor", "ClusterKopfPeering"}


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Raises kubernetes_validate's ValidationError when the object breaks its kind's schema;
    strict mode also rejects fields the schema does not know."""
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
