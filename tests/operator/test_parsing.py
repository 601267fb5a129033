"""Reading TandemDeployment specs: defaults, tier overrides, the policy config, and clear errors."""

from __future__ import annotations

import pytest

from tandem.policy.autoscaling import AutoscalingConfig
from tandem_operator.parsing import parse_spec
from tandem_operator.spec import MetricsSourceKind, ModelSource, pool_autoscaling_config

MODEL = {"pvc": {"claimName": "models", "path": "llama"}}
ROUTER = {"apiKeysSecret": "tenants"}


def test_a_single_model_is_one_default_tier_with_defaults():
    spec = parse_spec({"model": MODEL, "router": ROUTER}, "llama", "img:1")
    (tier,) = spec.tiers
    assert tier.name == "default" and tier.model.source is ModelSource.PVC
    assert tier.model.model_dir == "/models/llama"
    assert (tier.prefill.device, tier.prefill.num_gpus, tier.decode.replicas) == ("cuda", 1, None)
    assert spec.router.replicas == 1 and not spec.autoscaling.is_enabled
    assert spec.autoscaling.metrics_source is MetricsSourceKind.SCRAPE


def test_tier_pool_fields_override_the_shared_ones_key_by_key():
    spec = parse_spec({
        "tiers": [{"name": "small", "model": {"image": {"path": "/m/small"}}},
                  {"name": "large", "model": {"hostPath": {"path": "/mnt/large"}},
                   "decode": {"nodeSelector": {"gpu": "h200"}, "gpus": 4}}],
        "decode": {"nodeSelector": {"gpu": "l40s"}, "replicas": 2}, "router": ROUTER,
    }, "llama", "img:1")
    small, large = spec.tiers
    assert small.decode.node_selector == {"gpu": "l40s"} and small.decode.num_gpus == 1
    assert large.decode.node_selector == {"gpu": "h200"} and large.decode.num_gpus == 4
    assert large.decode.replicas == 2  # not overridden: inherited
    assert large.model.model_dir == "/models" and small.model.model_dir == "/m/small"


def test_the_policy_gets_the_spec_values_and_its_own_defaults_for_the_rest():
    spec = parse_spec({"model": MODEL, "router": ROUTER, "autoscaling": {
        "enabled": True, "intervalSeconds": 20, "ttftSloSeconds": 0.5, "itlSloSeconds": 0.04,
        "scaleDownStabilizationSeconds": 120, "maxScaleUpStep": 2},
        "prefill": {"minReplicas": 2, "maxReplicas": 10,
                    "capacity": {"prefillTokensPerSecond": 12000}}}, "llama", "img")
    config = pool_autoscaling_config(spec.autoscaling, spec.tiers[0].prefill)
    defaults = AutoscalingConfig()
    assert (config.min_replicas, config.max_replicas) == (2, 10)
    assert (config.ttft_slo_s, config.itl_slo_s, config.interval_s) == (0.5, 0.04, 20)
    assert (config.scale_down_stabilization_s, config.max_scale_up_step) == (120, 2)
    assert config.prefill_tokens_per_s_per_replica == 12000
    assert config.scale_up_stabilization_s == defaults.scale_up_stabilization_s
    assert config.max_seqs_per_replica_at_itl_slo == defaults.max_seqs_per_replica_at_itl_slo
    assert config.enabled
    decode = pool_autoscaling_config(spec.autoscaling, spec.tiers[0].decode)
    assert (decode.min_replicas, decode.max_replicas) == (defaults.min_replicas, defaults.max_replicas)


@pytest.mark.parametrize(("raw", "message"), [
    ({"model": MODEL, "tiers": []}, "either model"),
    ({}, "either model"),
    ({"model": {**MODEL, "image": {"path": "/m"}}}, "exactly one of pvc, hostPath or image"),
    ({"model": {"pvc": {"claimName": "m", "path": "/abs"}}}, "spec.model: pvc.path must be relative"),
    ({"model": {"hostPath": {"path": "rel"}}}, "hostPath.path must be absolute"),
    ({"model": {**MODEL, "dtype": "int4"}}, "spec.model.dtype: must be one of"),
    ({"model": MODEL, "decode": {"minReplicas": 4, "maxReplicas": 2}}, "spec.decode: minReplicas"),
    ({"model": MODEL, "prefill": {"device": "cpu", "gpus": 1}}, "needs device: cuda"),
    ({"model": MODEL, "prefill": {"ucx": {"env": {"TLS": "tcp"}}}}, "spec.prefill.ucx: env keys"),
    ({"model": MODEL, "prefill": {"replica": 2}}, "spec.prefill: unknown field(s) replica"),
    ({"model": MODEL, "decode": {"replicas": -1}}, "spec.decode.replicas: must be >= 0"),
    ({"model": MODEL, "decode": {"replicas": "2"}}, "must be an integer"),
    ({"model": MODEL, "autoscaling": {"metrics": {"source": "prometheus"}}}, "prometheusUrl"),
    ({"model": MODEL, "autoscaling": {"metrics": {"rateWindow": "5 minutes"}}}, "rateWindow"),
    ({"model": MODEL, "prefill": {"minReplicas": 20}}, "spec.prefill: max_replicas"),
    ({"model": MODEL, "router": {"serviceType": "Ingress"}}, "spec.router.serviceType"),
    ({"model": MODEL, "decode": {"resources": {"limits": {"memory": [1]}}}},
     "spec.decode.resources.limits: memory must be quantities"),
    ({"model": MODEL, "decode": {"resources": {"limit": {}}}}, "unknown field(s) limit"),
    ({"tiers": [{"name": "a", "model": MODEL}, {"name": "a", "model": MODEL}], "router": ROUTER},
     "unique"),
    ({"tiers": [{"name": "Big_Tier", "model": MODEL}]}, "spec.tiers[0]: name"),
    ({"tiers": [{"model": MODEL}]}, "spec.tiers[0].name is required"),
])
def test_bad_specs_name_the_field(raw, message):
    with pytest.raises(ValueError) as error:
        parse_spec(raw, "llama", "img:1")
    assert message in str(error.value)


def test_names_and_images():
    with pytest.raises(ValueError, match="metadata.name"):
        parse_spec({"model": MODEL, "router": ROUTER}, "x" * 41, "img")
    with pytest.raises(ValueError, match="spec.image is required"):
        parse_spec({"model": MODEL, "router": ROUTER}, "llama", None)
    assert parse_spec({"model": MODEL, "router": ROUTER, "image": "mine:2"}, "llama",
                      None).image == "mine:2"
