"""The router pods: size, placement, the difficulty policy and its estimator, API keys and TLS."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from tandem.policy.difficulty_policy import parse_policy
from tandem_operator.spec.folder import FolderSpec
from tandem_operator.spec.pool import EnvVar, Resources, Toleration
from tandem_operator.spec.rules import Rule, SpecModel, described


class RouterSpec(SpecModel):
    """The router."""

    replicas: int = described("Router replicas.", default=1, ge=1)
    resources: Resources = Field(default_factory=dict)
    node_selector: dict[str, str] = described("Node labels the router pods need.",
                                              default_factory=dict)
    tolerations: list[Toleration] = described("Tolerations of the pods.", default_factory=list)
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = described(
        "Type of the router Service.", default="ClusterIP")
    policy: dict[str, Any] | None = described(
        "Difficulty routing policy (policy.yaml, docs/difficulty-routing.md); its bands name "
        "the tiers.", default=None)
    estimator: FolderSpec | None = described(
        "Folder of the trained difficulty estimator the policy reads (`tandem difficulty train`).",
        default=None)
    api_keys_secret: str | None = described("Secret with api-keys.yaml (API key -> tenant).",
                                            default=None, min_length=1)
    allow_anonymous: bool = described("Serve requests without an API key (anonymous tenant).",
                                      default=False)
    tls_secret: str | None = described("kubernetes.io/tls Secret for the router's listeners.",
                                       default=None, min_length=1)
    env: list[EnvVar] = described("Extra environment (e.g. OTEL_EXPORTER_OTLP_ENDPOINT for traces).",
                                  default_factory=list)
    extra_args: list[str] = described("Extra flags of `tandem router`.", default_factory=list)
    max_unavailable: int = described("PodDisruptionBudget maxUnavailable.", default=1, ge=0)

    RULES = (
        Rule("has(self.apiKeysSecret) || (has(self.allowAnonymous) && self.allowAnonymous)",
             "set apiKeysSecret (a Secret holding api-keys.yaml) or allowAnonymous: true; "
             "without either the router refuses every request",
             lambda router: bool(router.api_keys_secret or router.allow_anonymous)),
        Rule("!has(self.policy) || has(self.estimator)",
             "router.policy needs router.estimator: the policy maps the estimator's difficulty "
             "score to tiers", lambda router: router.policy is None or router.estimator is not None,
             field="estimator"),
        Rule("!has(self.estimator) || has(self.policy)",
             "router.estimator is read only by router.policy (the router takes both or neither)",
             lambda router: router.estimator is None or router.policy is not None,
             field="policy"),
    )

    @field_validator("policy")
    @classmethod
    def _the_router_accepts_the_policy(cls, policy: dict[str, Any] | None) -> dict[str, Any] | None:
        # The router's own loader: a policy it would refuse at start is refused here.
        if policy is not None:
            parse_policy(policy)
        return policy

    def policy_tiers(self) -> set[str]:
        """Every tier the policy routes to (tenant bands and tier maps included)."""
        return parse_policy(self.policy).tiers if self.policy is not None else set()
