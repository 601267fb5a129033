"""Whether Kubernetes NetworkPolicies admit a connection, by the rules of the API's reference.

A pod is isolated for ingress once any policy in its namespace selects it; a connection is then
allowed when some selecting policy has an ingress rule whose ports include the target port (no
ports: every port) and whose peers include the source (no peers: every source). A peer with only
a podSelector means pods of the policy's own namespace; with a namespaceSelector, pods of the
namespaces it selects. ipBlock peers are not evaluated (they never match a pod here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace


@dataclass(slots=True, frozen=True)
class PodRef:
    """A pod as policies see it: its labels, its namespace and its container ports by name."""

    labels: Mapping[str, str]
    namespace: str
    named_ports: Mapping[str, int]

    @property
    def namespace_labels(self) -> dict[str, str]:
        """The labels every namespace carries."""
        return {NAMESPACE_NAME_LABEL: self.namespace}


def pod_ref(template: Mapping[str, Any], namespace: str) -> PodRef:
    """A pod made from a Deployment's pod template, in a namespace."""
    ports = {port["name"]: int(port["containerPort"])
             for container in template["spec"]["containers"]
             for port in container.get("ports") or [] if port.get("name")}
    return PodRef(dict(template["metadata"].get("labels") or {}), namespace, ports)


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector against labels (an empty selector selects everything)."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def admits(policies: Iterable[Mapping[str, Any]], source: PodRef, target: PodRef, port: int) -> bool:
    """Whether `source` may open a TCP connection to `target` on `port`."""
    selecting = [p for p in policies if p["metadata"]["namespace"] == target.namespace
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                 and selects(p["spec"].get("podSelector"), target.labels)]
    if not selecting:
        return True  # not isolated
    return any(_rule_admits(rule, policy["metadata"]["namespace"], source, target, port)
               for policy in selecting for rule in policy["spec"].get("ingress") or [])


def _rule_admits(rule: Mapping[str, Any], policy_namespace: str, source: PodRef, target: PodRef,
                 port: int) -> bool:
    ports = rule.get("ports")
    if ports and not any(_port_matches(entry, target, port) for entry in ports):
        return False
    peers = rule.get("from")
    return not peers or any(_peer_matches(peer, policy_namespace, source) for peer in peers)


def _port_matches(entry: Mapping[str, Any], target: PodRef, port: int) -> bool:
    if entry.get("protocol", "TCP") != "TCP":
        return False
    wanted = entry.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, str):
        wanted = target.named_ports.get(wanted)
    return wanted == port or (wanted is not None and wanted <= port <= entry.get("endPort", wanted))


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, source: PodRef) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], source.namespace_labels):
            return False
    elif source.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], source.labels)
