"""Rendered pods are accepted by the real consumers: `tandem`'s own parsers, the policy loader,
and every file flag points into a volume the pod mounts. (tests/e2e_k8s runs them for real.)"""

from __future__ import annotations

import argparse
import importlib
import posixpath
from typing import Any

import pytest
import yaml

from tandem.cli import SUBCOMMANDS
from tandem.policy.difficulty_policy import parse_policy
from tandem_operator.manifests.objects import Owner, desired_objects
from tandem_operator.parsing import parse_spec

OWNER = Owner("llama", "serving", "uid-1")
MODEL = {"pvc": {"claimName": "models", "path": "llama-3-8b"}, "name": "llama-3-8b"}
POLICY = {"version": 1, "bands": [{"range": [0.0, 1.0], "tier": "llama-3-8b", "thinking": False,
                                   "answer_budget": 256, "temperature": 0.0, "num_samples": 1,
                                   "selection": "first_finished"}]}
FILE_FLAGS = ("--model", "--policy", "--api-keys", "--worker-token-file", "--tls-cert", "--tls-key")


def _render(raw: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    spec = parse_spec(raw, OWNER.name, "registry.example/tandem:1")
    return {(o["kind"], o["metadata"]["name"]): o for o in desired_objects(OWNER, spec, {})}


def _parse(container: dict[str, Any]) -> argparse.Namespace:
    """What `tandem <command> ARGS` makes of the container's args (fails on what it would reject)."""
    assert container["command"] == ["tandem"]
    name, *rest = container["args"]
    module = importlib.import_module(SUBCOMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"tandem {name}")
    module.add_arguments(parser)
    try:
        return parser.parse_args(rest)
    except SystemExit:
        pytest.fail(f"`tandem {name}` rejects the rendered args {rest}")


def _mounted(pod: dict[str, Any], path: str) -> bool:
    mounts = pod["containers"][0].get("volumeMounts") or []
    return any(path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
               for m in mounts)


def _pods(objects) -> dict[str, dict[str, Any]]:
    return {name: obj["spec"]["template"]["spec"] for (kind, name), obj in objects.items()
            if kind == "Deployment"}


@pytest.mark.parametrize("router", [{"allowAnonymous": True}, {"apiKeysSecret": "tenants"},
                                    {"apiKeysSecret": "tenants", "policy": POLICY,
                                     "tlsSecret": "router-tls"}])
def test_every_container_command_parses_and_its_files_are_mounted(router):
    objects = _render({"model": MODEL, "router": router})
    for name, pod in _pods(objects).items():
        args = pod["containers"][0]["args"]
        _parse(pod["containers"][0])
        for flag in FILE_FLAGS:
            if flag in args:
                path = args[args.index(flag) + 1]
                assert _mounted(pod, path), f"{name}: {flag} {path} is not in a mounted volume"


def test_the_router_loads_the_workers_model_folder():
    pods = _pods(_render({"model": MODEL, "router": {"allowAnonymous": True}}))
    router = _parse(pods["llama-router"]["containers"][0])
    worker = _parse(pods["llama-default-decode"]["containers"][0])
    assert router.model == worker.model and router.model_name == worker.model_name
    volume = lambda pod: next(v for v in pod["volumes"] if v["name"] == "model")  # noqa: E731
    assert volume(pods["llama-router"]) == volume(pods["llama-default-decode"])


def test_without_a_policy_the_router_runs_its_default_and_with_one_the_loader_accepts_it():
    objects = _render({"model": MODEL, "router": {"allowAnonymous": True}})
    assert _parse(_pods(objects)["llama-router"]["containers"][0]).policy is None
    assert ("ConfigMap", "llama-router-policy") not in objects
    objects = _render({"model": MODEL, "router": {"allowAnonymous": True, "policy": POLICY}})
    config = objects["ConfigMap", "llama-router-policy"]["data"]
    policy_path = _parse(_pods(objects)["llama-router"]["containers"][0]).policy
    parse_policy(yaml.safe_load(config[posixpath.basename(policy_path)]))


def test_anonymous_access_only_when_the_spec_asks_and_no_keys_is_an_invalid_spec():
    anonymous = _pods(_render({"model": MODEL, "router": {"allowAnonymous": True}}))
    assert _parse(anonymous["llama-router"]["containers"][0]).allow_anonymous
    keyed = _pods(_render({"model": MODEL, "router": {"apiKeysSecret": "tenants"}}))
    assert not _parse(keyed["llama-router"]["containers"][0]).allow_anonymous
    with pytest.raises(ValueError, match="apiKeysSecret.*allowAnonymous"):
        _render({"model": MODEL})


def test_router_and_workers_share_the_worker_token_secret():
    pods = _pods(_render({"model": MODEL, "router": {"allowAnonymous": True}}))
    secrets = set()
    for name, pod in pods.items():
        args = _parse(pod["containers"][0])
        assert args.worker_token_file, name
        mount = next(m for m in pod["containers"][0]["volumeMounts"]
                     if args.worker_token_file.startswith(m["mountPath"] + "/"))
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        secrets.add(volume["secret"]["secretName"])
    assert secrets == {"llama-worker-token"}
