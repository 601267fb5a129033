"""A whole TandemDeployment spec: image, one model or several tiers, shared pools, router and
autoscaling; the root of the CRD's spec schema."""

from __future__ import annotations

import functools
import re
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, model_validator

from tandem_operator.spec.autoscaling import AutoscalingSpec
from tandem_operator.spec.folder import ModelSpec
from tandem_operator.spec.pool import PoolSpec
from tandem_operator.spec.router import RouterSpec
from tandem_operator.spec.rules import FieldError, Rule, SpecModel, described
from tandem_operator.spec.scaling import pool_autoscaling_config

DEFAULT_TIER = "default"
MAX_NAME_LENGTH = 40  # "<name>-<tier>-prefill" must stay a 63-character DNS label
MAX_TIER_LENGTH = 14
MAX_TIERS = 16  # bounds the API server's cost estimate of the CEL rules inside each tier
DNS_LABEL = "^[a-z]([-a-z0-9]*[a-z0-9])?$"
PHASES = ("prefill", "decode")

# The resource's name, checked on the whole object (the CRD's root) and by `parse_spec`.
NAME_RULE = Rule(f"self.metadata.name.size() <= {MAX_NAME_LENGTH} && "
                 f"self.metadata.name.matches('{DNS_LABEL}')",
                 f"metadata.name must be a DNS label of at most {MAX_NAME_LENGTH} characters",
                 lambda name: len(name) <= MAX_NAME_LENGTH and re.match(DNS_LABEL, name) is not None)


class TierSpec(SpecModel):
    """A model tier with its own prefill and decode pools."""

    name: str = described("Tier name (tandem.dev/model label; the name the router serves).",
                          pattern=DNS_LABEL, max_length=MAX_TIER_LENGTH)
    model: ModelSpec
    prefill: PoolSpec = described("Fields that replace spec.prefill's, key by key.",
                                  default_factory=PoolSpec)
    decode: PoolSpec = described("Fields that replace spec.decode's, key by key.",
                                 default_factory=PoolSpec)

    RULES = (
        Rule("!has(self.model.name)",
             "a tier is served under its tier name: leave model.name out",
             lambda tier: tier.model.served_name is None, field="model"),
    )


class DeploymentSpec(SpecModel):
    """A disaggregated prefill/decode LLM deployment: give either model or tiers."""

    image: str | None = described("Image of every component (default: the operator's).",
                                  default=None, min_length=1)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = described(
        "Pull policy.", default="IfNotPresent")
    image_pull_secrets: list[str] = described("Secrets to pull the image with.",
                                              default_factory=list)
    model: ModelSpec | None = described("One model (one tier named default).", default=None)
    prefill: PoolSpec = described("The prefill worker pool.", default_factory=PoolSpec)
    decode: PoolSpec = described("The decode worker pool.", default_factory=PoolSpec)
    tier_list: list[TierSpec] | None = Field(
        default=None, alias="tiers", min_length=1, max_length=MAX_TIERS,
        description="Several model tiers (instead of model).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    router: RouterSpec
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)

    _name: str = PrivateAttr(default="")

    SCHEMA_EXTRA = {"oneOf": [{"required": ["model"]}, {"required": ["tiers"]}]}

    @model_validator(mode="before")
    @classmethod
    def _tiers_inherit_the_shared_pools(cls, data: Any) -> Any:
        # The one-of first (the API server checks it with SCHEMA_EXTRA): nothing else makes
        # sense without it. Then a tier's pool fields replace the shared ones key by key.
        if not isinstance(data, dict):
            return data
        if (data.get("model") is None) == (data.get("tiers") is None):
            raise ValueError("give either model (one tier) or tiers (several), not both or neither")
        if not isinstance(data.get("tiers"), list):
            return data
        shared = {phase: data[phase] for phase in PHASES if isinstance(data.get(phase), dict)}
        return {**data, "tiers": [_inherit(tier, shared) for tier in data["tiers"]]}

    @model_validator(mode="after")
    def _named(self, info: ValidationInfo) -> DeploymentSpec:
        if info.context and "name" in info.context:
            self._name = info.context["name"]
        return self

    @model_validator(mode="after")
    def _tiers_fit_together(self) -> DeploymentSpec:
        names = [tier.name for tier in self.tiers]
        if len(set(names)) != len(names):
            raise FieldError(("tiers",), f"names must be unique, got {', '.join(names)}")
        for index, tier in enumerate(self.tiers):
            for phase in PHASES:
                where = ((phase,) if self.tier_list is None else ("tiers", index, phase))
                try:  # the shared autoscaling policy's own checks, with its defaults filled in
                    pool_autoscaling_config(self.autoscaling, getattr(tier, phase))
                except ValueError as error:
                    raise FieldError(where, str(error)) from None
        self._policy_routes_to_served_tiers()
        return self

    def _policy_routes_to_served_tiers(self) -> None:
        # The router serves a tiered spec's tiers by tier name, and one model by `model.name`.
        routed = self.router.policy_tiers()
        if not routed:
            return
        if self.tier_list is None and self.model.served_name is None:
            raise FieldError(("model", "name"), "is required with router.policy: the policy's "
                             "bands name the served model")
        unknown = routed - set(self.served_names())
        if unknown:
            raise FieldError(("router", "policy"), f"routes to {', '.join(sorted(unknown))}, "
                             f"which this deployment does not serve (it serves "
                             f"{', '.join(self.served_names())})")

    @property
    def name(self) -> str:
        """The resource's metadata.name."""
        return self._name

    @functools.cached_property
    def tiers(self) -> tuple[TierSpec, ...]:
        """Every tier; a spec with one model has one tier named `default`."""
        if self.tier_list is not None:
            return tuple(self.tier_list)
        return (TierSpec.model_construct(name=DEFAULT_TIER, model=self.model,
                                         prefill=self.prefill, decode=self.decode),)

    def served_names(self) -> list[str]:
        """The model names the router serves: the tiers' names, or the one model's name."""
        if self.tier_list is None:
            return [self.model.served_name] if self.model.served_name else []
        return [tier.name for tier in self.tier_list]

    def claim_names(self) -> list[str]:
        """Every PersistentVolumeClaim the pods mount: the tiers' models' and the estimator's."""
        folders = [tier.model for tier in self.tiers] + [self.router.estimator]
        return sorted({folder.claim_name for folder in folders
                       if folder is not None and folder.claim_name})


def _inherit(tier: Any, shared: dict[str, dict[str, Any]]) -> Any:
    # Raw fields, so that a bad value is reported where the tier's pool holds it.
    if not isinstance(tier, dict):
        return tier
    merged = dict(tier)
    for phase, fields in shared.items():
        own = tier.get(phase) or {}
        if isinstance(own, dict):
            merged[phase] = {**fields, **own}
    return merged
