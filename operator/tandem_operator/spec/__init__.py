"""The TandemDeployment spec as one set of typed models: the parser, the defaults and the CRD's
schema (`tandem_operator.crd`) all come from here.

Field names follow the CRD (camelCase there, snake_case here). Unset autoscaling values stay None
so that `tandem.policy.autoscaling.AutoscalingConfig` remains their only source of defaults.
"""

from tandem_operator.spec.autoscaling import AutoscalingSpec, MetricsSourceKind, MetricsSpec
from tandem_operator.spec.deployment import (
    DEFAULT_TIER,
    MAX_NAME_LENGTH,
    MAX_TIER_LENGTH,
    NAME_RULE,
    DeploymentSpec,
    TierSpec,
)
from tandem_operator.spec.folder import (
    DTYPES,
    MODEL_MOUNT_DIR,
    FolderSpec,
    ModelSource,
    ModelSpec,
)
from tandem_operator.spec.pool import (
    DEFAULT_RDMA_RESOURCE,
    DEFAULT_RDMA_TRANSPORTS,
    CapacitySpec,
    PoolSpec,
    ScalingMode,
    UcxSpec,
)
from tandem_operator.spec.router import RouterSpec
from tandem_operator.spec.scaling import pool_autoscaling_config

__all__ = [
    "DEFAULT_RDMA_RESOURCE", "DEFAULT_RDMA_TRANSPORTS", "DEFAULT_TIER", "DTYPES", "MAX_NAME_LENGTH",
    "MAX_TIER_LENGTH", "MODEL_MOUNT_DIR", "NAME_RULE", "AutoscalingSpec", "CapacitySpec",
    "DeploymentSpec", "FolderSpec", "MetricsSourceKind", "MetricsSpec", "ModelSource", "ModelSpec",
    "PoolSpec", "RouterSpec", "ScalingMode", "TierSpec", "UcxSpec", "pool_autoscaling_config",
]
