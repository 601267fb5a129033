"""The chart rendered by the real Helm engine (helm-python-sdk), linted, and schema-checked."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import helm_python as helm
import pytest
import yaml

from tandem.policy.autoscaling import Phase
from tandem_operator.autoscale.metrics import PoolRef
from tandem_operator.autoscale.prometheus import PrometheusSource
from tandem_operator.manifests.objects import Owner, desired_objects
from tandem_operator.parsing import parse_spec
from tests.helm.crd_schema import validator
from tests.helm.schemas import CUSTOM_KINDS, KUBERNETES_VERSION, validate_manifest

CHART = pathlib.Path(__file__).resolve().parents[2] / "helm" / "tandem"
RELEASE, NAMESPACE = "tandem", "serving"
ON = {"deployment": {"enabled": True}}
RDMA = {"rdma": True, "netDevices": "mlx5_0:1"}
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "first-deployment": ON,
    "autoscaling-on": {"deployment": {"enabled": True, "spec": {
        "prefill": {"minReplicas": 1, "maxReplicas": 4},
        "decode": {"minReplicas": 1, "maxReplicas": 8},
        "autoscaling": {"enabled": True, "ttftSloSeconds": 1.5, "metrics": {
            "source": "prometheus", "prometheusUrl": "http://prometheus.monitoring:9090"}}}}},
    "autoscaling-off": {"deployment": {"enabled": True, "spec": {
        "prefill": {"replicas": 3}, "autoscaling": {"enabled": False}}}},
    "rdma": {"deployment": {"enabled": True, "spec": {
        "prefill": {"ucx": RDMA}, "decode": {"ucx": RDMA}}}},
    "monitoring": {"monitoring": {"serviceMonitor": {"enabled": True, "labels": {
        "release": "kube-prometheus-stack"}}, "grafanaDashboard": {"enabled": True}}},
    "tiers": {"deployment": {"enabled": True, "name": "assistant", "spec": {
        "model": None,
        "tiers": [{"name": "small", "model": {"image": {"path": "/opt/models/small"}}},
                  {"name": "large", "model": {"pvc": {"claimName": "models", "path": "large"}},
                   "decode": {"gpus": 4, "nodeSelector": {"gpu": "a100"}}}]}}},
    "ha-clusterwide-netpol": {"operator": {"replicas": 2, "clusterWide": True},
                              "networkPolicy": {"enabled": True}},
    "namespaces-netpol": {"operator": {"watchNamespaces": ["serving", "batch"]},
                          "networkPolicy": {"enabled": True, "routerFrom": [
                              {"namespaceSelector": {"matchLabels": {"team": "apps"}}}]}},
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart renders for these values (CRDs excluded, as `helm template`)."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return [doc for path, text in sorted(manifests.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def _by_kind(objects, kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


@pytest.fixture(scope="module")
def td_validator():
    crd = yaml.safe_load((CHART / "crds" / "tandemdeployments.tandem.dev.yaml").read_text())
    return validator(crd)


@pytest.mark.parametrize("name", VARIANTS)
def test_renders_lints_and_validates(name, td_validator):
    values = VARIANTS[name]
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE,
                       kube_version=f"v{KUBERNETES_VERSION}")
    assert report["errors"] == [] and all(m["severity"] < 2 for m in report["messages"]), report
    objects = render(values)
    assert objects
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == RELEASE, obj["metadata"]["name"]
        assert labels.get("app.kubernetes.io/managed-by") == "Helm"
        if obj["kind"] == "TandemDeployment":
            td_validator.validate(obj)
        elif obj["kind"] not in CUSTOM_KINDS:
            validate_manifest(obj)


def test_default_install_is_a_namespaced_operator_with_least_privilege():
    objects = render({})
    assert {o["kind"] for o in objects} == {
        "ServiceAccount", "Deployment", "Role", "RoleBinding", "ClusterRole",
        "ClusterRoleBinding", "ClusterKopfPeering"}
    (role,) = _by_kind(objects, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        # Secrets: created (worker tokens) and looked up by name, never listed, watched or patched.
        assert "secrets" not in rule["resources"] or rule["verbs"] == ["get", "create"]
    (cluster_role,) = _by_kind(objects, "ClusterRole")  # peering only
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {"clusterkopfpeerings"}
    (operator,) = _by_kind(objects, "Deployment")
    pod = operator["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["tandem", "operator"]
    assert container["args"][:3] == ["--namespace=serving", "--peering=tandem-operator",
                                     "--priority=100"]
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"][
        "readOnlyRootFilesystem"]
    assert _by_kind(objects, "ClusterKopfPeering")[0]["metadata"]["name"] == "tandem-operator"


def test_several_namespaces_get_one_role_each_and_cluster_wide_a_cluster_role():
    namespaced = render(VARIANTS["namespaces-netpol"])
    assert sorted(r["metadata"]["namespace"] for r in _by_kind(namespaced, "Role")) == [
        "batch", "serving"]
    args = _by_kind(namespaced, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=serving" in args and "--namespace=batch" in args
    router_policies = [p for p in _by_kind(namespaced, "NetworkPolicy")
                       if p["metadata"]["name"].endswith("-router")]
    assert router_policies[0]["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"team": "apps"}}}]

    clusterwide = render(VARIANTS["ha-clusterwide-netpol"])
    assert not _by_kind(clusterwide, "Role") and len(_by_kind(clusterwide, "ClusterRole")) == 2
    assert _by_kind(clusterwide, "PodDisruptionBudget")[0]["spec"]["minAvailable"] == 1
    args = _by_kind(clusterwide, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args


def test_the_rdma_values_reach_the_worker_pods():
    (resource,) = _by_kind(render(VARIANTS["rdma"]), "TandemDeployment")
    spec = parse_spec(resource["spec"], resource["metadata"]["name"], "img:1")
    pods = {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in desired_objects(
        Owner(spec.name, NAMESPACE, "uid"), spec, {}) if o["kind"] == "Deployment"}
    for name in ("tandem-default-prefill", "tandem-default-decode"):
        container = pods[name]["containers"][0]
        assert container["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
        assert container["resources"]["limits"]["rdma/rdma_shared_device_a"] == "1"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["UCX_NET_DEVICES"] == "mlx5_0:1" and "rc" in env["UCX_TLS"].split(",")


def test_tiers_render_as_given_and_the_operator_accepts_them():
    (resource,) = _by_kind(render(VARIANTS["tiers"]), "TandemDeployment")
    assert resource["metadata"]["name"] == "assistant" and "model" not in resource["spec"]
    spec = parse_spec(resource["spec"], "assistant", "img:1")
    assert [tier.name for tier in spec.tiers] == ["small", "large"]
    assert spec.tiers[1].decode.node_selector == {"gpu": "a100"}


def test_service_monitor_labels_match_what_the_prometheus_source_queries():
    objects = render(VARIANTS["monitoring"])
    (monitor,) = _by_kind(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    targets = {r["targetLabel"] for r in endpoint["relabelings"]}
    queries = PrometheusSource(None, "http://p").queries(PoolRef("ns", "d", "t", Phase.PREFILL))
    for label in ("namespace", "tandem_deployment", "tandem_role", "tandem_model"):
        assert label in targets
        assert all(f'{label}="' in query for query in queries.values())


def test_the_dashboard_charts_every_metric_of_the_contract():
    (config_map,) = [o for o in render(VARIANTS["monitoring"]) if o["kind"] == "ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["tandem.json"])
    expressions = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    for metric in ("tandem_queue_requests", "tandem_queue_prompt_tokens", "tandem_running_requests",
                   "tandem_kv_blocks_used", "tandem_kv_blocks_total", "tandem_prefill_tokens_total",
                   "tandem_generated_tokens_total", "tandem_ttft_seconds_bucket",
                   "tandem_itl_seconds_bucket", "tandem_kv_transfer_bytes_total",
                   "tandem_kv_transfer_seconds_bucket", "tandem_requests_total"):
        assert metric in expressions


def test_notes_tell_how_to_reach_the_first_deployment():
    with helm.Chart.load(CHART) as chart:
        notes = chart.render(ON, name=RELEASE, namespace=NAMESPACE)["tandem/templates/NOTES.txt"]
    assert "port-forward service/tandem-router 8000:8000" in notes
    assert "ClusterKopfPeering tandem-operator" in notes


@pytest.mark.parametrize(("values", "message"), [
    ({"operator": {"replicas": 2, "peering": {"enabled": False}}}, "needs operator.peering"),
    ({"operator": {"watchNamespaces": ["batch"]}, **ON}, "does not watch the release namespace"),
    ({"operator": {"replicas": 0}}, "minimum"),
    ({"operatr": {}}, "operatr"),
    ({"deployment": {"enabled": True, "spec": {"tiers": [{"name": "a", "model": {
        "image": {"path": "/m"}}}]}}}, "either model or tiers"),
])
def test_bad_values_fail_with_a_message(values, message):
    with pytest.raises(helm.HelmError) as error:
        render(values)
    assert message in str(error.value)
