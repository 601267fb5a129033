"""Who sets a pool's replicas: the operator's autoscaler, an external scaler, or the spec."""

from __future__ import annotations

import enum
from collections.abc import Callable

from tandem_operator.spec import AutoscalingSpec, PoolSpec


class ScalingMode(str, enum.Enum):
    """How one pool is sized."""

    OPERATOR = "operator"  # the operator's PhaseAutoscaler reads the load and patches replicas
    EXTERNAL = "external"  # an HPA or KEDA ScaledObject scales the pool's Deployment through its
                           # scale subresource; neither the autoscaler nor the reconciler writes
                           # its replicas
    FIXED = "fixed"        # `replicas` from the spec, kept by the reconciler


ModeOf = Callable[[AutoscalingSpec, PoolSpec], ScalingMode]  # who sizes a pool, from the spec


def pool_scaling_mode(autoscaling: AutoscalingSpec, pool: PoolSpec) -> ScalingMode:
    """The mode the spec gives one pool."""
    if autoscaling.is_enabled and pool.is_autoscaled:
        return ScalingMode.OPERATOR
    return ScalingMode.FIXED
