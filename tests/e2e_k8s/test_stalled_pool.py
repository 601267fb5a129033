"""A pool whose pods never schedule, end to end: the status says so after the pending timeout, the
autoscaler stops waiting for them, and the deployment recovers once the pool fits the node.

The minimal example, with the decode pool on CPU and the prefill pool asking for a GPU that this
node does not have; everything is read and changed through the Kubernetes API.
"""

from __future__ import annotations

import pytest
import yaml

from tests.cluster.api import DEPLOYMENTS, EVENTS, PODS
from tests.cluster.cluster import Cluster
from tests.e2e_k8s.conftest import NAMESPACE
from tests.e2e_k8s.test_install import EXAMPLE, condition, install_minimal, td_status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

AUTOSCALING = {"enabled": True, "intervalSeconds": 2, "pendingTimeoutSeconds": 6,
               "scaleDownStabilizationSeconds": 2, "metrics": {"source": "scrape"}}
# Two pods that cannot be placed: a pool blocked by them could not even shrink to its minimum.
PREFILL_ON_GPU = {"device": "cuda", "gpus": 1, "replicas": 2, "minReplicas": 1, "maxReplicas": 2}


def stalled_example() -> dict:
    """The minimal example with the prefill pool on a GPU (none here) and decode on CPU."""
    example = yaml.safe_load(EXAMPLE.read_text())
    spec = example["spec"]
    spec["prefill"] = {**spec["prefill"], **PREFILL_ON_GPU}
    spec["decode"] = {**spec["decode"], "device": "cpu"}
    spec["autoscaling"] = AUTOSCALING
    return example


def pool_decision(status: dict, pool: str) -> dict:
    """The autoscaler's latest decision for one pool, from the status."""
    return next((d for d in (status.get("autoscaling") or {}).get("pools") or []
                 if d["pool"] == pool), {})


async def test_an_unschedulable_pool_is_reported_and_blocks_nothing(cluster: Cluster, operator,
                                                                      tmp_path):
    example = await install_minimal(cluster, tmp_path, stalled_example())
    name = example["metadata"]["name"]
    prefill, decode = f"{name}-default-prefill", f"{name}-default-decode"

    def pending_prefill_pods() -> set[str]:
        names = set()
        for pod in cluster.api.items(PODS, NAMESPACE):
            scheduled = next((c for c in (pod.get("status") or {}).get("conditions") or []
                              if c["type"] == "PodScheduled"), {})
            if (pod["metadata"]["labels"].get("tandem.dev/role") == "prefill"
                    and pod["status"].get("phase") == "Pending"
                    and scheduled.get("reason") == "Unschedulable"):
                names.add(pod["metadata"]["name"])
        return names

    pending = await cluster.wait_for(pending_prefill_pods, "prefill pods Pending, unschedulable",
                                     timeout_s=120)
    await cluster.wait_for(
        lambda: [e for e in cluster.api.items(EVENTS, NAMESPACE) if e["reason"] == "FailedScheduling"
                 and e["involvedObject"]["name"] in pending
                 and "Insufficient nvidia.com/gpu" in e["message"]],
        "a FailedScheduling event for a prefill pod", timeout_s=60)

    # The decode pod may itself be unready past this short timeout while its model loads; once it
    # is ready, the condition names the prefill pool alone.
    stalled = await cluster.wait_for(
        lambda: (c := condition(td_status(cluster, name), "ReplicasStalled")).get("status")
        == "True" and prefill in c["message"] and decode not in c["message"] and c,
        "the ReplicasStalled condition naming the prefill pool alone", timeout_s=120)
    print(f"\nReplicasStalled: {stalled['reason']}: {stalled['message']}")
    assert condition(td_status(cluster, name), "Ready")["status"] == "False"

    # The autoscaler no longer waits for the stalled pods: the prefill pool, idle, shrinks to its
    # minimum although none of its pods ever ran; the decode pool keeps getting load decisions.
    await cluster.wait_for(
        lambda: cluster.api.get(DEPLOYMENTS, NAMESPACE, prefill)["spec"]["replicas"] == 1,
        "the stalled prefill pool scaled down to its minimum", timeout_s=60)
    first = pool_decision(td_status(cluster, name), decode)
    latest = await cluster.wait_for(
        lambda: (d := pool_decision(td_status(cluster, name), decode)).get("time", "")
        > first.get("time", "") and d, "a later decision for the decode pool", timeout_s=60)
    assert latest["mode"] == "operator" and latest["reason"].startswith("keeping 1:"), latest
    status = td_status(cluster, name)
    print(f"prefill decision: {pool_decision(status, prefill)['reason']}")
    print(f"decode decision: {latest['reason']}")
    assert "no longer waiting" in pool_decision(status, prefill)["reason"]
    assert condition(status, "ReplicasStalled")["status"] == "True"

    # The pool fits once it runs on CPU: the stall clears and the deployment becomes Ready.
    await cluster.apply({**example, "spec": {"prefill": {"device": "cpu", "gpus": None}}},
                        NAMESPACE)
    await cluster.wait_for(
        lambda: condition(td_status(cluster, name), "ReplicasStalled").get("status") == "False"
        and condition(td_status(cluster, name), "Ready").get("status") == "True",
        "ReplicasStalled False and Ready True", timeout_s=180)
    status = td_status(cluster, name)
    print(f"after the fix: ReplicasStalled {condition(status, 'ReplicasStalled')['reason']}, "
          f"Ready: {condition(status, 'Ready')['message']}")
    assert status["prefillReplicas"] == "1/1" and status["decodeReplicas"] == "1/1"
