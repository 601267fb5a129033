"""Who sets a pool's replicas: the operator's autoscaler, an external scaler, or the spec."""

from __future__ import annotations

from collections.abc import Callable

from tandem_operator.spec.autoscaling import AutoscalingSpec
from tandem_operator.spec.pool import PoolSpec, ScalingMode

ModeOf = Callable[[AutoscalingSpec, PoolSpec], ScalingMode]  # who sizes a pool, from the spec


def pool_scaling_mode(autoscaling: AutoscalingSpec, pool: PoolSpec) -> ScalingMode:
    """The mode the spec gives one pool: its own `scaling` wins; unset, the operator scales it
    when autoscaling is enabled, else its replicas stay as the spec says."""
    if pool.scaling is not None:
        return pool.scaling
    return ScalingMode.OPERATOR if autoscaling.is_enabled else ScalingMode.FIXED
