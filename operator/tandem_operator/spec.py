"""The TandemDeployment spec as validated dataclasses (`parsing.parse_spec` builds them).

Field names follow the CRD (camelCase there, snake_case here). Defaults for the autoscaling
policy are left as None so that `tandem.policy.autoscaling.AutoscalingConfig` stays their only
source.
"""

from __future__ import annotations

import enum
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from tandem.policy.autoscaling import AutoscalingConfig

MODEL_MOUNT_DIR = "/models"
MAX_NAME_LENGTH = 40  # "<name>-<tier>-prefill" must stay a 63-character DNS label
MAX_TIER_LENGTH = 14
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
RATE_WINDOW = re.compile(r"^[1-9][0-9]*[smh]$")
DTYPES = ("bfloat16", "float16", "float32")
DEFAULT_RDMA_RESOURCE = "rdma/rdma_shared_device_a"
DEFAULT_RDMA_TRANSPORTS = "rc,sm,self,cuda_copy,cuda_ipc"


class ModelSource(str, enum.Enum):
    """Where a model's weights come from."""

    PVC = "pvc"
    HOST_PATH = "hostPath"
    IMAGE = "image"


class MetricsSourceKind(str, enum.Enum):
    """How the autoscaler reads pool metrics."""

    SCRAPE = "scrape"
    PROMETHEUS = "prometheus"


@dataclass(slots=True, frozen=True)
class ModelSpec:
    """One model folder: a path in a PVC, on the host, or inside the image."""

    source: ModelSource
    path: str
    claim_name: str | None = None
    served_name: str | None = None
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.source is ModelSource.PVC:
            if not self.claim_name:
                raise ValueError("pvc.claimName is required")
            if self.path.startswith("/") or ".." in self.path.split("/"):
                raise ValueError(f"pvc.path must be relative inside the claim, got {self.path!r}")
        elif not self.path.startswith("/"):
            raise ValueError(f"{self.source.value}.path must be absolute, got {self.path!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def model_dir(self) -> str:
        """The folder the workers load (`--model`)."""
        if self.source is ModelSource.IMAGE:
            return self.path
        if self.source is ModelSource.HOST_PATH:
            return MODEL_MOUNT_DIR
        return posixpath.join(MODEL_MOUNT_DIR, self.path) if self.path else MODEL_MOUNT_DIR


@dataclass(slots=True, frozen=True)
class UcxSpec:
    """How a pool's UCX endpoints reach each other: RDMA devices and `UCX_*` settings."""

    is_rdma: bool = False
    rdma_resource: str = DEFAULT_RDMA_RESOURCE
    num_rdma_devices: int = 1
    transports: str | None = None
    net_devices: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [key for key in self.extra_env if not re.match(r"^UCX_[A-Z0-9_]+$", key)]
        if bad:
            raise ValueError(f"env keys must look like UCX_NAME, got {', '.join(bad)}")
        if self.num_rdma_devices < 1:
            raise ValueError("rdmaDevices must be >= 1")

    def env(self) -> dict[str, str]:
        """The UCX environment variables of a worker container."""
        env = dict(self.extra_env)
        transports = self.transports or (DEFAULT_RDMA_TRANSPORTS if self.is_rdma else None)
        if transports:
            env["UCX_TLS"] = transports
        if self.net_devices:
            env["UCX_NET_DEVICES"] = self.net_devices
        return env


@dataclass(slots=True, frozen=True)
class PoolSpec:
    """One phase's worker pool: size, placement, hardware and per-replica capacity."""

    replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    is_autoscaled: bool = True
    device: str = "cuda"
    num_gpus: int = 1
    resources: dict[str, dict[str, str]] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    env: list[dict[str, Any]] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    ucx: UcxSpec = field(default_factory=UcxSpec)
    max_unavailable: int = 1
    prefill_tokens_per_s_per_replica: float | None = None
    max_seqs_per_replica: float | None = None
    target_kv_usage: float | None = None
    scale_down_headroom: float | None = None

    def __post_init__(self) -> None:
        if self.num_gpus > 0 and self.device != "cuda":
            raise ValueError(f"gpus: {self.num_gpus} needs device: cuda, got {self.device}")
        if (self.min_replicas is not None and self.max_replicas is not None
                and self.min_replicas > self.max_replicas):
            raise ValueError(f"minReplicas ({self.min_replicas}) must be <= maxReplicas "
                             f"({self.max_replicas})")


@dataclass(slots=True, frozen=True)
class TierSpec:
    """A model tier: one model with its own prefill and decode pools."""

    name: str
    model: ModelSpec
    prefill: PoolSpec
    decode: PoolSpec

    def __post_init__(self) -> None:
        if len(self.name) > MAX_TIER_LENGTH or not DNS_LABEL.match(self.name):
            raise ValueError(f"name {self.name!r} must be a DNS label of at most "
                             f"{MAX_TIER_LENGTH} characters")


@dataclass(slots=True, frozen=True)
class RouterSpec:
    """The router pods: size, placement, routing/budget policy, API keys and TLS."""

    replicas: int = 1
    resources: dict[str, dict[str, str]] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    service_type: str = "ClusterIP"
    policy: dict[str, Any] = field(default_factory=dict)
    api_keys_secret: str | None = None
    allow_anonymous: bool = False
    tls_secret: str | None = None
    extra_args: list[str] = field(default_factory=list)
    max_unavailable: int = 1

    def __post_init__(self) -> None:
        if not self.api_keys_secret and not self.allow_anonymous:
            raise ValueError("set apiKeysSecret (a Secret holding api-keys.yaml) or "
                             "allowAnonymous: true; without either the router refuses every request")


@dataclass(slots=True, frozen=True)
class AutoscalingSpec:
    """The autoscaler's switch, tick interval, SLOs, behaviour and metrics source."""

    is_enabled: bool = False
    interval_s: float = 15.0
    cooldown_s: float | None = None
    ttft_slo_s: float | None = None
    itl_slo_s: float | None = None
    scale_up_stabilization_s: float | None = None
    scale_down_stabilization_s: float | None = None
    max_scale_up_step: int | None = None
    max_scale_down_step: int | None = None
    metrics_source: MetricsSourceKind = MetricsSourceKind.SCRAPE
    prometheus_url: str | None = None
    rate_window: str = "1m"

    def __post_init__(self) -> None:
        if self.metrics_source is MetricsSourceKind.PROMETHEUS and not self.prometheus_url:
            raise ValueError("metrics.prometheusUrl is required with source: prometheus")
        if not RATE_WINDOW.match(self.rate_window):
            raise ValueError(f"metrics.rateWindow must look like 30s, 1m or 1h, "
                             f"got {self.rate_window!r}")
        if self.interval_s < 1:
            raise ValueError(f"intervalSeconds must be >= 1, got {self.interval_s}")


@dataclass(slots=True, frozen=True)
class DeploymentSpec:
    """A whole TandemDeployment: image, tiers, router and autoscaling."""

    name: str
    image: str
    tiers: tuple[TierSpec, ...]
    router: RouterSpec
    autoscaling: AutoscalingSpec = field(default_factory=AutoscalingSpec)
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.name) > MAX_NAME_LENGTH or not DNS_LABEL.match(self.name):
            raise ValueError(f"metadata.name {self.name!r} must be a DNS label of at most "
                             f"{MAX_NAME_LENGTH} characters")
        names = [tier.name for tier in self.tiers]
        if not names:
            raise ValueError("spec: at least one tier is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"spec.tiers: names must be unique, got {', '.join(names)}")


def pool_autoscaling_config(autoscaling: AutoscalingSpec, pool: PoolSpec) -> AutoscalingConfig:
    """The shared policy's config for one pool; fields left unset take the policy's defaults."""
    values = {
        "min_replicas": pool.min_replicas, "max_replicas": pool.max_replicas,
        "ttft_slo_s": autoscaling.ttft_slo_s, "itl_slo_s": autoscaling.itl_slo_s,
        "interval_s": autoscaling.cooldown_s or autoscaling.interval_s,
        "scale_up_stabilization_s": autoscaling.scale_up_stabilization_s,
        "scale_down_stabilization_s": autoscaling.scale_down_stabilization_s,
        "max_scale_up_step": autoscaling.max_scale_up_step,
        "max_scale_down_step": autoscaling.max_scale_down_step,
        "prefill_tokens_per_s_per_replica": pool.prefill_tokens_per_s_per_replica,
        "max_seqs_per_replica_at_itl_slo": pool.max_seqs_per_replica,
        "target_kv_usage": pool.target_kv_usage, "scale_down_headroom": pool.scale_down_headroom,
        "enabled": autoscaling.is_enabled and pool.is_autoscaled,
    }
    return AutoscalingConfig(**{key: value for key, value in values.items() if value is not None})

