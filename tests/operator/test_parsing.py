"""Reading TandemDeployment specs: defaults, tier overrides, scaling modes, the policy config, the
router's policy and estimator, and errors that name the field."""

from __future__ import annotations

import pydantic
import pytest

from tandem.policy.autoscaling import AutoscalingConfig
from tandem_operator.autoscale.mode import pool_scaling_mode
from tandem_operator.parsing import parse_spec
from tandem_operator.spec import MetricsSourceKind, ModelSource, ScalingMode, pool_autoscaling_config
from tests.operator.specs import ESTIMATOR, policy_for

MODEL = {"pvc": {"claimName": "models", "path": "llama"}}
ROUTER = {"apiKeysSecret": "tenants"}
IMAGE_MODEL = {"image": {"path": "/m/small"}}


def _spec(**fields):
    return parse_spec({"model": MODEL, "router": ROUTER, **fields}, "llama", "img:1")


def test_a_single_model_is_one_default_tier_with_defaults():
    spec = _spec()
    (tier,) = spec.tiers
    assert tier.name == "default" and tier.model.source is ModelSource.PVC
    assert (tier.model.claim_name, tier.model.path) == ("models", "llama")
    assert (tier.model.dtype, tier.model.served_name) == ("bfloat16", None)
    assert (tier.prefill.device, tier.prefill.num_gpus, tier.decode.replicas) == ("cuda", 1, None)
    assert (tier.prefill.scaling, tier.prefill.ucx.env(), tier.prefill.resources) == (None, {}, {})
    assert spec.router.replicas == 1 and spec.router.estimator is None and spec.router.policy is None
    assert not spec.autoscaling.is_enabled and spec.autoscaling.interval_s == 15.0
    assert spec.autoscaling.metrics_source is MetricsSourceKind.SCRAPE
    assert (spec.name, spec.image, spec.image_pull_policy) == ("llama", "img:1", "IfNotPresent")


def test_the_parsed_spec_is_immutable():
    spec = _spec()
    with pytest.raises(pydantic.ValidationError):
        spec.tiers[0].decode.replicas = 3


def test_tier_pool_fields_override_the_shared_ones_key_by_key():
    spec = parse_spec({
        "tiers": [{"name": "small", "model": IMAGE_MODEL},
                  {"name": "large", "model": {"hostPath": {"path": "/mnt/large"}},
                   "decode": {"nodeSelector": {"gpu": "h200"}, "gpus": 4}}],
        "decode": {"nodeSelector": {"gpu": "l40s"}, "replicas": 2},
        "prefill": {"device": "cpu"}, "router": ROUTER,
    }, "llama", "img:1")
    small, large = spec.tiers
    assert small.decode.node_selector == {"gpu": "l40s"} and small.decode.num_gpus == 1
    assert large.decode.node_selector == {"gpu": "h200"} and large.decode.num_gpus == 4
    assert large.decode.replicas == 2  # not overridden: inherited
    assert (large.prefill.device, large.prefill.num_gpus) == ("cpu", 0)  # cpu: no GPU by default
    assert (large.model.source, small.model.path) == (ModelSource.HOST_PATH, "/m/small")


def test_pod_spec_fragments_come_out_as_the_dicts_kubernetes_takes():
    pool = _spec(decode={
        "resources": {"limits": {"memory": "200Gi"}, "requests": {"cpu": 8}},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        "ucx": {"rdma": True, "netDevices": "mlx5_0:1", "env": {"UCX_RNDV_THRESH": "8192"}},
    }).tiers[0].decode
    assert pool.resources == {"limits": {"memory": "200Gi"}, "requests": {"cpu": "8"}}
    assert pool.tolerations == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pool.env == [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    assert pool.ucx.is_rdma and pool.ucx.env() == {
        "UCX_RNDV_THRESH": "8192", "UCX_TLS": "rc,sm,self,cuda_copy,cuda_ipc",
        "UCX_NET_DEVICES": "mlx5_0:1"}


def test_the_policy_gets_the_spec_values_and_its_own_defaults_for_the_rest():
    spec = _spec(autoscaling={
        "enabled": True, "intervalSeconds": 20, "ttftSloSeconds": 0.5, "itlSloSeconds": 0.04,
        "scaleDownStabilizationSeconds": 120, "maxScaleUpStep": 2, "pendingTimeoutSeconds": 90},
        prefill={"minReplicas": 2, "maxReplicas": 10, "capacity": {"prefillTokensPerSecond": 12000}})
    config = pool_autoscaling_config(spec.autoscaling, spec.tiers[0].prefill)
    defaults = AutoscalingConfig()
    assert (config.min_replicas, config.max_replicas) == (2, 10)
    assert (config.ttft_slo_s, config.itl_slo_s, config.interval_s) == (0.5, 0.04, 20)
    assert (config.scale_down_stabilization_s, config.max_scale_up_step) == (120, 2)
    assert config.prefill_tokens_per_s_per_replica == 12000 and config.pending_timeout_s == 90
    assert config.scale_up_stabilization_s == defaults.scale_up_stabilization_s
    assert config.max_seqs_per_replica_at_itl_slo == defaults.max_seqs_per_replica_at_itl_slo
    assert config.enabled
    decode = pool_autoscaling_config(spec.autoscaling, spec.tiers[0].decode)
    assert (decode.min_replicas, decode.max_replicas) == (defaults.min_replicas, defaults.max_replicas)
    assert pool_autoscaling_config(_spec().autoscaling, _spec().tiers[0].decode).pending_timeout_s \
        == defaults.pending_timeout_s


@pytest.mark.parametrize(("enabled", "scaling", "mode"), [
    (False, None, ScalingMode.FIXED), (True, None, ScalingMode.OPERATOR),
    (False, "operator", ScalingMode.OPERATOR), (True, "fixed", ScalingMode.FIXED),
    (True, "external", ScalingMode.EXTERNAL), (False, "external", ScalingMode.EXTERNAL),
])
def test_an_explicit_scaling_mode_wins_and_the_policy_is_enabled_only_for_operator(
        enabled, scaling, mode):
    pool = {"replicas": 2} if scaling is None else {"replicas": 2, "scaling": scaling}
    spec = _spec(autoscaling={"enabled": enabled}, decode=pool)
    decode = spec.tiers[0].decode
    assert pool_scaling_mode(spec.autoscaling, decode) is mode
    assert pool_autoscaling_config(spec.autoscaling, decode).enabled is (mode is ScalingMode.OPERATOR)


def test_the_estimator_is_a_folder_like_a_model_and_claims_are_listed_once():
    spec = parse_spec({
        "tiers": [{"name": "small", "model": IMAGE_MODEL},
                  {"name": "large", "model": {"pvc": {"claimName": "weights", "path": "l"}}},
                  {"name": "huge", "model": {"pvc": {"claimName": "models", "path": "h"}}}],
        "router": {**ROUTER, "policy": policy_for("small", "large", "huge"),
                   "estimator": ESTIMATOR}}, "td", "img")
    estimator = spec.router.estimator
    assert (estimator.source, estimator.claim_name, estimator.path) == (
        ModelSource.PVC, "models", "estimators/features")
    assert spec.claim_names() == ["models", "weights"]
    assert _spec().claim_names() == ["models"]
    assert parse_spec({"model": IMAGE_MODEL, "router": ROUTER}, "td", "i").claim_names() == []


def test_a_policy_routes_to_the_names_the_router_serves():
    # One model: the router serves it under model.name (--model-name); tiers: by tier name.
    named = {**MODEL, "name": "llama-3-8b"}
    spec = _spec(model=named, router={**ROUTER, "policy": policy_for("llama-3-8b"),
                                      "estimator": ESTIMATOR})
    assert spec.served_names() == ["llama-3-8b"]
    assert spec.router.policy_tiers() == {"llama-3-8b"}
    tenant_map = {**policy_for("llama-3-8b"), "tenants": {"free": {"tier_map": {"llama-3-8b": "x"}}}}
    with pytest.raises(ValueError, match=r"spec\.router\.policy: routes to x"):
        _spec(model=named, router={**ROUTER, "policy": tenant_map, "estimator": ESTIMATOR})


def _with_tiers(*tiers, **fields):
    return {"tiers": [{"name": name, "model": IMAGE_MODEL, **extra} for name, extra in tiers],
            "router": ROUTER, **fields}


WITH_POLICY = {**ROUTER, "policy": policy_for("default"), "estimator": ESTIMATOR}


@pytest.mark.parametrize(("raw", "message"), [
    ({"model": MODEL, "tiers": [], "router": ROUTER}, "spec: give either model"),
    ({"router": ROUTER}, "spec: give either model"),
    ({"model": {**MODEL, "image": {"path": "/m"}}, "router": ROUTER},
     "spec.model: give exactly one of pvc, hostPath or image"),
    ({"model": {"pvc": {"claimName": "m", "path": "/abs"}}, "router": ROUTER}, "spec.model.pvc.path:"),
    ({"model": {"pvc": {"claimName": "m", "path": "a/../../etc"}}, "router": ROUTER},
     "spec.model.pvc.path: must stay inside the claim"),
    ({"model": {"pvc": {"path": "a"}}, "router": ROUTER}, "spec.model.pvc.claimName: is required"),
    ({"model": {"hostPath": {"path": "rel"}}, "router": ROUTER}, "spec.model.hostPath.path:"),
    ({"model": {"image": {"path": "rel"}}, "router": ROUTER}, "spec.model.image.path:"),
    ({"model": {**MODEL, "dtype": "int4"}, "router": ROUTER}, "spec.model.dtype:"),
    ({"model": MODEL, "router": ROUTER, "decode": {"minReplicas": 4, "maxReplicas": 2}},
     "spec.decode.minReplicas: must be <= maxReplicas"),
    (_with_tiers(("a", {}), ("b", {"decode": {"minReplicas": 4}}), decode={"maxReplicas": 2}),
     "spec.tiers[1].decode.minReplicas: must be <= maxReplicas"),
    ({"model": MODEL, "router": ROUTER, "decode": {"minReplicas": 0}}, "spec.decode.minReplicas:"),
    ({"model": MODEL, "router": ROUTER, "prefill": {"device": "cpu", "gpus": 1}},
     "spec.prefill.gpus: gpus need device: cuda"),
    ({"model": MODEL, "router": ROUTER, "prefill": {"device": "tpu"}}, "spec.prefill.device:"),
    ({"model": MODEL, "router": ROUTER, "prefill": {"ucx": {"env": {"TLS": "tcp"}}}},
     "spec.prefill.ucx.env: keys must look like UCX_NAME"),
    ({"model": MODEL, "router": ROUTER, "prefill": {"ucx": {"rdmaDevices": 0}}},
     "spec.prefill.ucx.rdmaDevices:"),
    ({"model": MODEL, "router": ROUTER, "prefill": {"replica": 2}}, "spec.prefill.replica: unknown field"),
    (_with_tiers(("a", {"model": {"pvc": {"claimName": "m", "claim": "x"}}})),
     "spec.tiers[0].model.pvc.claim: unknown field"),
    ({"model": MODEL, "router": ROUTER, "decode": {"replicas": -1}}, "spec.decode.replicas:"),
    ({"model": MODEL, "router": ROUTER, "decode": {"replicas": "2"}},
     "spec.decode.replicas: Input should be a valid integer"),
    ({"model": MODEL, "router": ROUTER, "decode": {"scaling": "hpa"}}, "spec.decode.scaling:"),
    ({"model": MODEL, "router": {**ROUTER, "allowAnonymous": "yes"}}, "spec.router.allowAnonymous:"),
    ({"model": MODEL, "router": ROUTER, "autoscaling": {"metrics": {"source": "prometheus"}}},
     "spec.autoscaling.metrics.prometheusUrl: is required with source: prometheus"),
    ({"model": MODEL, "router": ROUTER, "autoscaling": {"metrics": {"rateWindow": "5 minutes"}}},
     "spec.autoscaling.metrics.rateWindow:"),
    ({"model": MODEL, "router": ROUTER, "autoscaling": {"intervalSeconds": 0.5}},
     "spec.autoscaling.intervalSeconds:"),
    ({"model": MODEL, "router": ROUTER, "autoscaling": {"pendingTimeoutSeconds": 0}},
     "spec.autoscaling.pendingTimeoutSeconds:"),
    ({"model": MODEL, "router": ROUTER, "prefill": {"minReplicas": 20}},
     "spec.prefill: max_replicas (16) must be >= min_replicas (20)"),
    (_with_tiers(("a", {"decode": {"minReplicas": 20}})), "spec.tiers[0].decode: max_replicas"),
    ({"model": MODEL, "router": {**ROUTER, "serviceType": "Ingress"}}, "spec.router.serviceType:"),
    ({"model": MODEL, "router": ROUTER, "decode": {"resources": {"limits": {"memory": [1]}}}},
     "spec.decode.resources.limits.memory: must be a quantity"),
    ({"model": MODEL, "router": ROUTER, "decode": {"resources": {"limit": {}}}},
     "spec.decode.resources.limit: unknown field"),
    ({"model": MODEL, "router": ROUTER, "decode": {"tolerations": [{"operator": "Maybe"}]}},
     "spec.decode.tolerations[0].operator:"),
    ({"model": MODEL}, "spec.router: is required"),
    ({"model": MODEL, "router": {}}, "spec.router: set apiKeysSecret"),
    ({"model": MODEL, "router": ROUTER, "imagePullPolicy": "Sometimes"}, "spec.imagePullPolicy:"),
    (_with_tiers(("a", {}), ("a", {})), "spec.tiers: names must be unique"),
    (_with_tiers(("Big_Tier", {})), "spec.tiers[0].name:"),
    ({"tiers": [{"name": "a", "model": {**MODEL, "name": "other"}}], "router": ROUTER},
     "spec.tiers[0].model: a tier is served under its tier name"),
    (_with_tiers(("a-very-long-tier", {})), "spec.tiers[0].name:"),
    ({"tiers": [{"model": MODEL}], "router": ROUTER}, "spec.tiers[0].name: is required"),
    ({"model": MODEL, "router": {**ROUTER, "estimator": {**ESTIMATOR, "image": {"path": "/e"}}}},
     "spec.router.estimator: give exactly one of pvc, hostPath or image"),
    ({"model": MODEL, "router": {**ROUTER, "policy": policy_for("default")}},
     "spec.router.estimator: router.policy needs router.estimator"),
    ({"model": MODEL, "router": {**ROUTER, "estimator": ESTIMATOR}},
     "spec.router.policy: router.estimator is read only by router.policy"),
    ({"model": MODEL, "router": {**WITH_POLICY, "policy": {"version": 1}}},
     "spec.router.policy: policy: 'bands' is required"),
    ({"model": MODEL, "router": {**WITH_POLICY, "policy": {**policy_for("a"), "tiers": ["a"]}}},
     "spec.router.policy: policy: unknown keys ['tiers']"),
    ({"model": MODEL, "router": WITH_POLICY}, "spec.model.name: is required with router.policy"),
    (_with_tiers(("small", {}), router={**ROUTER, "policy": policy_for("small", "large"),
                                        "estimator": ESTIMATOR}),
     "spec.router.policy: routes to large, which this deployment does not serve (it serves small)"),
])
def test_bad_specs_name_the_field(raw, message):
    with pytest.raises(ValueError) as error:
        parse_spec(raw, "llama", "img:1")
    assert message in str(error.value)


def test_names_and_images():
    for name in ("x" * 41, "Llama", "llama_3"):
        with pytest.raises(ValueError, match="metadata.name must be a DNS label"):
            parse_spec({"model": MODEL, "router": ROUTER}, name, "img")
    with pytest.raises(ValueError, match="spec.image is required"):
        parse_spec({"model": MODEL, "router": ROUTER}, "llama", None)
    assert parse_spec({"model": MODEL, "router": ROUTER, "image": "mine:2"}, "llama",
                      None).image == "mine:2"
