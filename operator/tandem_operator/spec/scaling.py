"""The shared autoscaling policy's config for one pool, from the spec."""

from __future__ import annotations

from tandem.policy.autoscaling import AutoscalingConfig
from tandem_operator.autoscale import mode
from tandem_operator.spec.autoscaling import AutoscalingSpec
from tandem_operator.spec.pool import PoolSpec, ScalingMode


def pool_autoscaling_config(autoscaling: AutoscalingSpec, pool: PoolSpec) -> AutoscalingConfig:
    """The policy's config for one pool; unset fields take the policy's defaults. `enabled` is
    true exactly when the operator sizes the pool (`pool_scaling_mode`)."""
    values = {
        "min_replicas": pool.min_replicas, "max_replicas": pool.max_replicas,
        "ttft_slo_s": autoscaling.ttft_slo_s, "itl_slo_s": autoscaling.itl_slo_s,
        "interval_s": autoscaling.cooldown_s or autoscaling.interval_s,
        "scale_up_stabilization_s": autoscaling.scale_up_stabilization_s,
        "scale_down_stabilization_s": autoscaling.scale_down_stabilization_s,
        "max_scale_up_step": autoscaling.max_scale_up_step,
        "max_scale_down_step": autoscaling.max_scale_down_step,
        "prefill_tokens_per_s_per_replica": pool.capacity.prefill_tokens_per_second,
        "max_seqs_per_replica_at_itl_slo": pool.capacity.max_sequences,
        "target_kv_usage": pool.capacity.target_kv_usage,
        "scale_down_headroom": pool.capacity.scale_down_headroom,
        "pending_timeout_s": autoscaling.pending_timeout_s,
        "enabled": mode.pool_scaling_mode(autoscaling, pool) is ScalingMode.OPERATOR,
    }
    return AutoscalingConfig(**{key: value for key, value in values.items() if value is not None})
