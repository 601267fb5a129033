"""The worker token on Kubernetes: one Secret per TandemDeployment, created once and mounted into
every pod, where the real argument parsers of the router and the workers find it.

The reconciler runs against the API emulator. Each rendered container's args and env go through
the `tandem` subcommand's own parser; the token file it names must lie in a read-only Secret
volume of that pod, whose Secret the operator created, and reading it as the pod would (the
Secret's data laid out as the kubelet mounts it) must give the Secret's token.
"""

from __future__ import annotations

import argparse
import base64
import importlib
from pathlib import PurePosixPath

import kmock
import pytest

from tandem.cli import SUBCOMMANDS
from tandem.serving.worker_auth import TOKEN_ENV, read_token_file, worker_token_from_args
from tandem_operator.manifests.objects import Owner
from tandem_operator.parsing import parse_spec
from tandem_operator.reconcile import reconcile
from tests.helm.test_chart import render
from tests.operator.cluster import DEPLOYMENTS, IMAGE, NAMESPACE, create_td, live

SECRETS = kmock.resource("", "v1", "secrets")
SPEC = {"model": {"pvc": {"claimName": "models", "path": "llama"}},
        "prefill": {"replicas": 1}, "decode": {"replicas": 2}, "router": {"allowAnonymous": True}}


@pytest.fixture
async def owner(k8s) -> Owner:
    k8s.resources[SECRETS] = kmock.ResourceInfo(kind="Secret", namespaced=True)
    body = await create_td(k8s, "llama", SPEC)
    return Owner("llama", NAMESPACE, body["metadata"]["uid"])


async def _reconcile(kube, owner: Owner, raw_spec: dict = SPEC):
    return await reconcile(kube, owner, parse_spec(raw_spec, owner.name, IMAGE))


def _secret_tokens(k8s) -> dict[str, str]:
    return {name: base64.b64decode(secret["data"]["token"]).decode()
            for name, secret in live(k8s, SECRETS).items()}


def _parsed_args(container: dict, monkeypatch) -> argparse.Namespace:
    """The container's args as the `tandem` subcommand in it parses them, with its env set."""
    assert container["command"] == ["tandem"]
    command, *argv = container["args"]
    for entry in container.get("env", []):
        if "value" in entry:
            monkeypatch.setenv(entry["name"], entry["value"])
    parser = argparse.ArgumentParser()
    importlib.import_module(SUBCOMMANDS[command][0]).add_arguments(parser)
    return parser.parse_args(argv)


def _mounted_secret_file(pod: dict, container: dict, path: str) -> tuple[str, str]:
    """(Secret name, key) of the Secret volume item that the pod sees at `path`."""
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in container["volumeMounts"]:
        relative = PurePosixPath(path).relative_to(mount["mountPath"]) \
            if PurePosixPath(path).is_relative_to(mount["mountPath"]) else None
        if relative is None or "secret" not in volumes[mount["name"]]:
            continue
        assert mount.get("readOnly") is True
        secret = volumes[mount["name"]]["secret"]
        assert secret.get("defaultMode", 0o644) & 0o007 == 0, "the token must not be world-readable"
        keys = {item["path"]: item["key"] for item in secret.get("items", [])} or None
        return secret["secretName"], (keys[str(relative)] if keys else str(relative))
    raise AssertionError(f"{path} is in no Secret volume of the pod")


async def test_one_token_secret_is_created_and_kept_across_reconciles(k8s, kube, owner):
    first = await _reconcile(kube, owner)
    (name,) = _secret_tokens(k8s)
    token = _secret_tokens(k8s)[name]
    assert f"Secret/{name}" in first.created
    assert live(k8s, SECRETS)[name]["metadata"]["ownerReferences"] == [owner.reference()]
    changed = {**SPEC, "decode": {"replicas": 3}}
    await _reconcile(kube, owner, changed)
    again = await _reconcile(kube, owner, changed)
    assert _secret_tokens(k8s) == {name: token}
    assert not again.is_change


async def test_every_pod_reads_the_token_of_the_secret_from_its_mount(k8s, kube, owner, tmp_path, monkeypatch):
    await _reconcile(kube, owner)
    tokens = _secret_tokens(k8s)
    deployments = live(k8s, DEPLOYMENTS)
    assert {"llama-router", "llama-default-prefill", "llama-default-decode"} <= set(deployments)
    for deployment_name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        with monkeypatch.context() as scoped:
            scoped.delenv(TOKEN_ENV, raising=False)
            args = _parsed_args(container, scoped)
        assert args.worker_token_file and not args.insecure_no_worker_auth, deployment_name
        secret_name, key = _mounted_secret_file(pod, container, args.worker_token_file)
        assert secret_name in tokens, deployment_name
        # The kubelet writes each item of the Secret as a file: read it the way the pod does.
        mounted = tmp_path / deployment_name / key
        mounted.parent.mkdir()
        mounted.write_bytes(base64.b64decode(live(k8s, SECRETS)[secret_name]["data"][key]))
        args.worker_token_file = str(mounted)
        assert worker_token_from_args(args) == tokens[secret_name], deployment_name


async def test_a_deleted_token_secret_is_replaced_and_every_pod_restarts(k8s, kube, owner, tmp_path):
    await _reconcile(kube, owner)
    ((name, token),) = _secret_tokens(k8s).items()
    templates = {deployment_name: deployment["spec"]["template"]
                 for deployment_name, deployment in live(k8s, DEPLOYMENTS).items()}
    k8s.objects[SECRETS, NAMESPACE, name].delete()
    await _reconcile(kube, owner)
    ((_, new_token),) = _secret_tokens(k8s).items()
    assert new_token != token
    (tmp_path / "token").write_text(new_token)
    assert read_token_file(tmp_path / "token") == new_token  # the workers' own check accepts it
    # Pods read the token at start: a changed pod template makes Kubernetes replace every pod,
    # so that the router and the workers all hold the new token.
    restarted = {deployment_name: deployment["spec"]["template"]
                 for deployment_name, deployment in live(k8s, DEPLOYMENTS).items()}
    assert [n for n in templates if restarted[n] == templates[n]] == []
    again = await _reconcile(kube, owner)
    assert not again.is_change and _secret_tokens(k8s) == {name: new_token}
    assert {n: d["spec"]["template"] for n, d in live(k8s, DEPLOYMENTS).items()} == restarted


async def test_the_chart_lets_the_operator_make_every_call_the_reconciler_makes(k8s, kube, owner):
    num_before = len(list(k8s))  # the test's own calls (creating the TandemDeployment) are not the operator's
    await _reconcile(kube, owner)
    k8s.objects[SECRETS, NAMESPACE, next(iter(_secret_tokens(k8s)))].delete()
    await _reconcile(kube, owner)  # also the calls of replacing a token
    verbs = {kmock.action.FETCH: "get", kmock.action.LIST: "list", kmock.action.CREATE: "create",
             kmock.action.UPDATE: "patch", kmock.action.DELETE: "delete", kmock.action.WATCH: "watch"}
    made = {(request.resource.group, request.resource.plural + (f"/{request.subresource}" if request.subresource
                                                                 else ""), verbs[request.action])
            for request in list(k8s)[num_before:] if request.resource is not None}
    assert ("", "secrets", "create") in made
    (role,) = [obj for obj in render({}) if obj["kind"] == "Role"]
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert made - granted == set()
