"""A worker pool: size, scaling mode, placement, hardware, UCX transport and per-replica capacity."""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)

from tandem_operator.spec.rules import Choice, Rule, SpecModel, described

DEFAULT_RDMA_RESOURCE = "rdma/rdma_shared_device_a"
DEFAULT_RDMA_TRANSPORTS = "rc,sm,self,cuda_copy,cuda_ipc"
UCX_KEY = "^UCX_[A-Z0-9_]+$"


class ScalingMode(str, enum.Enum):
    """Who sizes a pool (`tandem_operator.autoscale.mode.pool_scaling_mode` decides)."""

    OPERATOR = "operator"  # the operator's PhaseAutoscaler reads the load and patches replicas
    EXTERNAL = "external"  # an HPA or KEDA ScaledObject scales the pool's Deployment through its
                           # scale subresource; the operator sets replicas only at creation
    FIXED = "fixed"        # `replicas` from the spec, kept by the reconciler


def _as_strings(amounts: dict[str, int | str]) -> dict[str, str]:
    # Quantities as strings: the API server returns them so, and the apply compares like with like.
    return {name: str(value) for name, value in amounts.items()}


def _quantity(value: Any, handler: ValidatorFunctionWrapHandler) -> int | str:
    # One message for both members of the union, not one per member.
    try:
        return handler(value)
    except ValidationError:
        raise ValueError(f"must be a quantity (an integer or a string like 16Gi), got {value!r}")


Quantity = Annotated[int | str, WrapValidator(_quantity), WithJsonSchema(
    {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True})]
Quantities = Annotated[dict[str, Quantity], AfterValidator(_as_strings)]


class ResourcesSpec(SpecModel):
    """Extra requests and limits (GPUs: use gpus)."""

    requests: Quantities = Field(default_factory=dict)
    limits: Quantities = Field(default_factory=dict)


class TolerationSpec(SpecModel):
    """A toleration."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class EnvVarSpec(SpecModel):
    """An environment variable."""

    name: str
    value: str | None = None
    value_from: dict[str, Any] | None = None


def _plain(model: SpecModel) -> dict[str, Any]:
    # Pod-spec fragments are passed into manifests as the dicts Kubernetes takes.
    return {key: value for key, value in model.model_dump(by_alias=True, exclude_none=True).items()
            if value != {}}


Resources = Annotated[ResourcesSpec, AfterValidator(_plain)]
Toleration = Annotated[TolerationSpec, AfterValidator(_plain)]
EnvVar = Annotated[EnvVarSpec, AfterValidator(_plain)]


class UcxSpec(SpecModel):
    """UCX transport settings for the KV transfer."""

    is_rdma: bool = Field(default=False, alias="rdma",
                          description="Request RDMA devices and the IPC_LOCK capability.")
    rdma_resource: str = described("Extended resource of the RDMA device plugin.",
                                   default=DEFAULT_RDMA_RESOURCE,
                                   pattern="^[a-z0-9.-]+/[A-Za-z0-9_.-]+$")
    num_rdma_devices: int = Field(default=1, ge=1, alias="rdmaDevices",
                                  description="RDMA devices per pod.")
    transports: str | None = described(
        f"UCX_TLS (default with rdma: {DEFAULT_RDMA_TRANSPORTS}).", default=None, min_length=1)
    net_devices: str | None = described("UCX_NET_DEVICES, e.g. mlx5_0:1.", default=None,
                                        min_length=1)
    # Bounded so that the API server's cost estimate of the CEL rule below stays small.
    extra_env: dict[str, str] = Field(default_factory=dict, alias="env", max_length=64,
                                      description="Extra UCX_* variables.")

    RULES = (Rule(f"!has(self.env) || self.env.all(k, k.matches('{UCX_KEY}'))",
                  "keys must look like UCX_NAME",
                  lambda ucx: all(re.match(UCX_KEY, key) for key in ucx.extra_env), field="env"),)

    def env(self) -> dict[str, str]:
        """The UCX environment variables of a worker container."""
        env = dict(self.extra_env)
        transports = self.transports or (DEFAULT_RDMA_TRANSPORTS if self.is_rdma else None)
        if transports:
            env["UCX_TLS"] = transports
        if self.net_devices:
            env["UCX_NET_DEVICES"] = self.net_devices
        return env


class CapacitySpec(SpecModel):
    """One replica's capacity at the SLO (defaults: the shared autoscaling policy's)."""

    prefill_tokens_per_second: float | None = described(
        "Prompt tokens per second one prefill replica computes.", default=None, gt=0)
    max_sequences: float | None = described(
        "Largest decode batch that meets the inter-token SLO.", default=None, gt=0)
    target_kv_usage: float | None = described("Keep mean KV block usage under this.",
                                              default=None, gt=0, le=1)
    scale_down_headroom: float | None = described("Shrink only if the load fits this fraction.",
                                                  default=None, gt=0, le=1)


class PoolSpec(SpecModel):
    """A worker pool (top-level fields are every tier's defaults, key by key)."""

    replicas: int | None = described("Replicas when fixed; the start size otherwise.",
                                     default=None, ge=0)
    min_replicas: int | None = described("Autoscaling lower bound.", default=None, ge=1)
    max_replicas: int | None = described("Autoscaling upper bound.", default=None, ge=1)
    scaling: Choice[ScalingMode] | None = described(
        "Who sizes the pool: operator (its autoscaler), external (an HPA or KEDA through the "
        "Deployment's scale subresource) or fixed (replicas). Default: operator when "
        "autoscaling.enabled, else fixed.", default=None)
    device: Literal["cuda", "cpu"] = described("Torch device.", default="cuda")
    num_gpus: int = Field(default=1, ge=0, alias="gpus",
                          description="nvidia.com/gpu per pod (default 1 on cuda, 0 on cpu).")
    resources: Resources = Field(default_factory=dict)
    node_selector: dict[str, str] = described("Node labels the pods need (e.g. a GPU type).",
                                              default_factory=dict)
    tolerations: list[Toleration] = described("Tolerations of the pods.", default_factory=list)
    env: list[EnvVar] = described("Extra environment.", default_factory=list)
    extra_args: list[str] = described("Extra flags of the worker command.", default_factory=list)
    ucx: UcxSpec = Field(default_factory=UcxSpec)
    capacity: CapacitySpec = Field(default_factory=CapacitySpec)
    max_unavailable: int = described("PodDisruptionBudget maxUnavailable.", default=1, ge=0)

    RULES = (
        Rule("!has(self.minReplicas) || !has(self.maxReplicas) || "
             "self.minReplicas <= self.maxReplicas", "must be <= maxReplicas",
             lambda pool: (pool.min_replicas is None or pool.max_replicas is None
                           or pool.min_replicas <= pool.max_replicas), field="minReplicas"),
        Rule("!has(self.gpus) || self.gpus == 0 || !has(self.device) || self.device == 'cuda'",
             "gpus need device: cuda", lambda pool: pool.num_gpus == 0 or pool.device == "cuda",
             field="gpus"),
    )

    @model_validator(mode="before")
    @classmethod
    def _gpus_follow_the_device(cls, data: Any) -> Any:
        # The default GPU count depends on the device: one on cuda, none on cpu.
        if isinstance(data, dict) and data.get("gpus") is None and data.get("device") == "cpu":
            return {**data, "gpus": 0}
        return data

