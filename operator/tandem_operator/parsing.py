"""Reads a raw TandemDeployment spec into the dataclasses of `spec`, naming every bad field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from tandem_operator.fields import Fields
from tandem_operator.spec import (
    DEFAULT_RDMA_RESOURCE,
    DTYPES,
    AutoscalingSpec,
    DeploymentSpec,
    MetricsSourceKind,
    ModelSource,
    ModelSpec,
    PoolSpec,
    RouterSpec,
    TierSpec,
    UcxSpec,
    pool_autoscaling_config,
)

DEFAULT_TIER = "default"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")

T = TypeVar("T")


def parse_spec(raw: Any, name: str, default_image: str | None) -> DeploymentSpec:
    """Reads and validates a TandemDeployment's spec; raises ValueError naming the bad field."""
    spec = Fields(raw, "spec")
    image = spec.text("image", default_image)
    if not image:
        raise ValueError("spec.image is required (the operator was started without --worker-image)")
    if spec.has("model") == spec.has("tiers"):
        raise ValueError("spec: give either model (one tier) or tiers (several), not both or neither")
    autoscaling = _autoscaling(spec.obj("autoscaling"))
    prefill_raw, decode_raw = spec.any_obj("prefill"), spec.any_obj("decode")
    if spec.has("model"):
        tiers = (TierSpec(DEFAULT_TIER, _model(spec.obj("model")),
                          _pool(Fields(prefill_raw, "spec.prefill"), autoscaling),
                          _pool(Fields(decode_raw, "spec.decode"), autoscaling)),)
    else:
        tiers = tuple(_tier(Fields(item, f"spec.tiers[{index}]"), prefill_raw, decode_raw,
                            autoscaling)
                      for index, item in enumerate(spec.obj_list("tiers")))
    parsed = DeploymentSpec(
        name=name, image=image, tiers=tiers,
        router=_router(spec.obj("router")),
        autoscaling=autoscaling,
        image_pull_policy=spec.text("imagePullPolicy", "IfNotPresent", PULL_POLICIES),
        image_pull_secrets=spec.str_list("imagePullSecrets"),
    )
    spec.check_known()
    return parsed


def _tier(tier: Fields, prefill_defaults: dict[str, Any], decode_defaults: dict[str, Any],
          autoscaling: AutoscalingSpec) -> TierSpec:
    # A tier's pool fields replace the top-level ones key by key.
    name = tier.text("name", None)
    if name is None:
        raise ValueError(f"{tier.path}.name is required")
    parsed = _build(tier, TierSpec,
        name=name,
        model=_model(tier.obj("model")),
        prefill=_pool(Fields({**prefill_defaults, **tier.any_obj("prefill")}, f"{tier.path}.prefill"),
                      autoscaling),
        decode=_pool(Fields({**decode_defaults, **tier.any_obj("decode")}, f"{tier.path}.decode"),
                     autoscaling),
    )
    tier.check_known()
    return parsed


def _model(model: Fields) -> ModelSpec:
    sources = [source for source in ModelSource if model.has(source.value)]
    if len(sources) != 1:
        raise ValueError(f"{model.path}: give exactly one of pvc, hostPath or image")
    where = model.obj(sources[0].value)
    parsed = _build(model, ModelSpec,
        source=sources[0],
        path=where.text("path", "" if sources[0] is ModelSource.PVC else None) or "",
        claim_name=where.text("claimName", None) if sources[0] is ModelSource.PVC else None,
        served_name=model.text("name", None),
        dtype=model.text("dtype", "bfloat16", DTYPES),
    )
    where.check_known()
    model.check_known()
    return parsed


def _pool(pool: Fields, autoscaling: AutoscalingSpec) -> PoolSpec:
    device = pool.text("device", "cuda", ("cuda", "cpu"))
    capacity = pool.obj("capacity")
    parsed = _build(pool, PoolSpec,
        replicas=pool.integer("replicas", None, minimum=0),
        min_replicas=pool.integer("minReplicas", None, minimum=1),
        max_replicas=pool.integer("maxReplicas", None, minimum=1),
        is_autoscaled=pool.flag("autoscale", True),
        device=device,
        num_gpus=pool.integer("gpus", 1 if device == "cuda" else 0, minimum=0),
        resources=_resources(pool.obj("resources")),
        node_selector=pool.str_map("nodeSelector"),
        tolerations=pool.obj_list("tolerations"),
        env=pool.obj_list("env"),
        extra_args=pool.str_list("extraArgs"),
        ucx=_ucx(pool.obj("ucx")),
        max_unavailable=pool.integer("maxUnavailable", 1, minimum=0),
        prefill_tokens_per_s_per_replica=capacity.number("prefillTokensPerSecond", None, positive=True),
        max_seqs_per_replica=capacity.number("maxSequences", None, positive=True),
        target_kv_usage=capacity.number("targetKvUsage", None, positive=True, at_most=1.0),
        scale_down_headroom=capacity.number("scaleDownHeadroom", None, positive=True, at_most=1.0),
    )
    capacity.check_known()
    pool.check_known()
    _build(pool, pool_autoscaling_config, autoscaling=autoscaling, pool=parsed)  # the policy's checks
    return parsed


def _ucx(ucx: Fields) -> UcxSpec:
    parsed = _build(ucx, UcxSpec,
        is_rdma=ucx.flag("rdma", False),
        rdma_resource=ucx.text("rdmaResource", DEFAULT_RDMA_RESOURCE),
        num_rdma_devices=ucx.integer("rdmaDevices", 1, minimum=1),
        transports=ucx.text("transports", None),
        net_devices=ucx.text("netDevices", None),
        extra_env=ucx.str_map("env"),
    )
    ucx.check_known()
    return parsed


def _router(router: Fields) -> RouterSpec:
    parsed = _build(router, RouterSpec,
        replicas=router.integer("replicas", 1, minimum=1),
        resources=_resources(router.obj("resources")),
        node_selector=router.str_map("nodeSelector"),
        tolerations=router.obj_list("tolerations"),
        service_type=router.text("serviceType", "ClusterIP", SERVICE_TYPES),
        policy=router.any_obj("policy"),
        api_keys_secret=router.text("apiKeysSecret", None),
        allow_anonymous=router.flag("allowAnonymous", False),
        tls_secret=router.text("tlsSecret", None),
        extra_args=router.str_list("extraArgs"),
        max_unavailable=router.integer("maxUnavailable", 1, minimum=0),
    )
    router.check_known()
    return parsed


def _autoscaling(autoscaling: Fields) -> AutoscalingSpec:
    metrics = autoscaling.obj("metrics")
    sources = tuple(kind.value for kind in MetricsSourceKind)
    parsed = _build(autoscaling, AutoscalingSpec,
        is_enabled=autoscaling.flag("enabled", False),
        interval_s=autoscaling.number("intervalSeconds", 15.0, positive=True),
        cooldown_s=autoscaling.number("cooldownSeconds", None, positive=True),
        ttft_slo_s=autoscaling.number("ttftSloSeconds", None, positive=True),
        itl_slo_s=autoscaling.number("itlSloSeconds", None, positive=True),
        scale_up_stabilization_s=autoscaling.number("scaleUpStabilizationSeconds", None),
        scale_down_stabilization_s=autoscaling.number("scaleDownStabilizationSeconds", None),
        max_scale_up_step=autoscaling.integer("maxScaleUpStep", None, minimum=1),
        max_scale_down_step=autoscaling.integer("maxScaleDownStep", None, minimum=1),
        metrics_source=MetricsSourceKind(metrics.text("source", "scrape", sources)),
        prometheus_url=metrics.text("prometheusUrl", None),
        rate_window=metrics.text("rateWindow", "1m"),
    )
    metrics.check_known()
    autoscaling.check_known()
    return parsed


def _resources(resources: Fields) -> dict[str, dict[str, str]]:
    # Quantities as strings: the API server returns them so, and the apply compares like with like.
    parsed = {}
    for section in ("requests", "limits"):
        amounts = resources.any_obj(section)
        bad = sorted(name for name, value in amounts.items()
                     if isinstance(value, bool) or not isinstance(value, (str, int, float)))
        if bad:
            raise ValueError(f"{resources.path}.{section}: {', '.join(bad)} must be quantities "
                             "(numbers or strings like 16Gi)")
        if amounts:
            parsed[section] = {name: str(value) for name, value in amounts.items()}
    resources.check_known()
    return parsed


def _build(fields: Fields, factory: Callable[..., T], **kwargs: Any) -> T:
    # The dataclasses' own checks do not know where in the spec they sit: prefix the path.
    try:
        return factory(**kwargs)
    except ValueError as exc:
        raise ValueError(f"{fields.path}: {exc}") from None
