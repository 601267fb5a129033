"""Rendered pods are accepted by the real consumers: `tandem`'s own parsers, the policy loader,
and every file flag points into a volume the pod mounts. (tests/e2e_k8s runs them for real.)"""

from __future__ import annotations

import argparse
import importlib
import os
import posixpath
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tandem.cli import SUBCOMMANDS
from tandem_operator.manifests.objects import Owner, desired_objects
from tandem_operator.parsing import parse_spec

OWNER = Owner("llama", "serving", "uid-1")
MODEL = {"pvc": {"claimName": "models", "path": "llama-3-8b"}, "name": "llama-3-8b"}
POLICY = {"version": 1, "bands": [{"range": [0.0, 1.0], "tier": "llama-3-8b", "thinking": False,
                                   "answer_budget": 256, "temperature": 0.0, "num_samples": 1,
                                   "selection": "first_finished"}]}
ESTIMATOR = {"pvc": {"claimName": "models", "path": "estimators/features"}}
FILE_FLAGS = ("--model", "--policy", "--estimator", "--api-keys", "--worker-token-file",
              "--tls-cert", "--tls-key")


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
                                     "estimator": ESTIMATOR, "tlsSecret": "router-tls"}])
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


def test_without_a_policy_the_router_runs_its_default_and_with_one_its_startup_checks_pass(
        models_claim, tmp_path):
    from router.main import _difficulty_parts
    from router.model_catalog import model_sources

    objects = _render({"model": MODEL, "router": {"allowAnonymous": True}})
    args = _parse(_pods(objects)["llama-router"]["containers"][0])
    assert args.policy is None and args.estimator is None
    assert ("ConfigMap", "llama-router-policy") not in objects
    objects = _render({"model": MODEL, "router": {"allowAnonymous": True, "policy": POLICY,
                                                  "estimator": ESTIMATOR}})
    pod = _pods(objects)["llama-router"]
    args = _parse(pod["containers"][0])
    on_host = _on_host(pod, objects, {"models": models_claim}, tmp_path)
    sources = model_sources(args.model, args.model_name, args.tier)
    parts = _difficulty_parts(argparse.Namespace(policy=on_host(args.policy),
                                                 estimator=on_host(args.estimator)), set(sources))
    assert parts["policy"].tiers == {"llama-3-8b"}


def test_anonymous_access_only_when_the_spec_asks_and_no_keys_is_an_invalid_spec():
    anonymous = _pods(_render({"model": MODEL, "router": {"allowAnonymous": True}}))
    assert _parse(anonymous["llama-router"]["containers"][0]).allow_anonymous
    keyed = _pods(_render({"model": MODEL, "router": {"apiKeysSecret": "tenants"}}))
    assert not _parse(keyed["llama-router"]["containers"][0]).allow_anonymous
    with pytest.raises(ValueError, match="apiKeysSecret.*allowAnonymous"):
        _render({"model": MODEL, "router": {}})


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


# --- examples/tandemdeployment-tiers.yaml: what its router and workers make of what is rendered.

TIERS_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tandemdeployment-tiers.yaml"


@pytest.fixture(scope="module")
def models_claim(tmp_path_factory) -> Path:
    """The `models` claim as the tiers example expects it: a tiny model at each tier's path and
    a features estimator trained with `tandem difficulty train`."""
    from tandem.engine.tiny_model import make_tiny_model
    from tests.integration.helpers import train_features_estimator

    claim = tmp_path_factory.mktemp("models")
    example = yaml.safe_load(TIERS_EXAMPLE.read_text())
    for seed, tier in enumerate(example["spec"]["tiers"]):
        make_tiny_model(claim / tier["model"]["pvc"]["path"], arch="llama", seed=seed)
    trained = train_features_estimator(tmp_path_factory.mktemp("training"))
    shutil.copytree(trained, claim / example["spec"]["router"]["estimator"]["pvc"]["path"])
    return claim


def _render_example(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    example = yaml.safe_load(path.read_text())
    spec = parse_spec(example["spec"], example["metadata"]["name"], "registry.example/tandem:1")
    owner = Owner(example["metadata"]["name"], "serving", "uid-1")
    return {(o["kind"], o["metadata"]["name"]): o for o in desired_objects(owner, spec, {})}


def _on_host(pod: dict[str, Any], objects, claims: dict[str, Path], tmp_path: Path):
    """A function mapping a path in the pod's container to this machine, with the pod's claim and
    ConfigMap volumes laid out as the kubelet would mount them."""
    roots: dict[str, Path] = {}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in pod["containers"][0]["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "persistentVolumeClaim" in volume:
            roots[mount["mountPath"]] = claims[volume["persistentVolumeClaim"]["claimName"]]
        elif "configMap" in volume:
            folder = tmp_path / mount["name"]
            folder.mkdir(parents=True, exist_ok=True)
            for key, text in objects["ConfigMap", volume["configMap"]["name"]]["data"].items():
                (folder / key).write_text(text)
            roots[mount["mountPath"]] = folder

    def on_host(path: str) -> str:
        for mount_path, root in roots.items():
            if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
                return str(root / posixpath.relpath(path, mount_path))
        pytest.fail(f"{path} is in no claim or ConfigMap volume of the pod")

    return on_host


def test_the_tiers_example_router_passes_its_own_startup_checks(models_claim, tmp_path):
    from router.main import _difficulty_parts, _load_tokenizers
    from router.model_catalog import model_sources

    objects = _render_example(TIERS_EXAMPLE)
    pod = _pods(objects)["assistant-router"]
    args = _parse(pod["containers"][0])
    on_host = _on_host(pod, objects, {"models": models_claim}, tmp_path)
    assert args.deployment_name == ["assistant"]
    assert args.model is None and args.policy and args.estimator
    sources = model_sources(args.model, args.model_name,
                            [f"{name}={on_host(folder)}" for name, _, folder
                             in (tier.partition("=") for tier in args.tier)])
    assert set(sources) == {"small", "large"}
    # The router's checks at start: policy and estimator together, every tier the policy names
    # served; then the estimator, the policy and each tier's tokenizer load from the mounts.
    parts = _difficulty_parts(argparse.Namespace(policy=on_host(args.policy),
                                                 estimator=on_host(args.estimator)), set(sources))
    assert parts["policy"].tiers == {"small", "large"} and parts["estimator"].name == "features"
    assert set(_load_tokenizers(sources)) == {"small", "large"}
    names = [volume["name"] for volume in pod["volumes"]]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63
               for name in names)


def test_the_tiers_example_workers_announce_the_tier_the_router_serves_from_their_folder(
        models_claim, tmp_path):
    from router.model_catalog import model_sources

    objects = _render_example(TIERS_EXAMPLE)
    pods = _pods(objects)
    router_pod = pods["assistant-router"]
    router = _parse(router_pod["containers"][0])
    router_on_host = _on_host(router_pod, objects, {"models": models_claim}, tmp_path / "router")
    tokenizer_folders = {name: router_on_host(folder) for name, folder
                         in model_sources(None, None, router.tier).items()}
    for tier in ("small", "large"):
        for role in ("prefill", "decode"):
            pod = pods[f"assistant-{tier}-{role}"]
            container = pod["containers"][0]
            worker = _parse(container)
            # What the worker announces (tandem.serving.worker_main: --model-name, else the
            # folder's name) is the tier the router's catalog matches it to.
            assert (worker.model_name or posixpath.basename(worker.model)) == tier
            on_host = _on_host(pod, objects, {"models": models_claim}, tmp_path / f"{tier}-{role}")
            assert on_host(worker.model) == tokenizer_folders[tier]
            assert (Path(on_host(worker.model)) / "config.json").is_file()
            # Every $(VAR) in the args is one the container's env defines (the kubelet expands it).
            defined = {entry["name"] for entry in container["env"]}
            used = {name for arg in container["args"] for name in re.findall(r"\$\((\w+)\)", arg)}
            assert used <= defined, f"{tier}-{role}: {sorted(used - defined)} undefined"
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_the_tracing_environment_reaches_router_and_workers(monkeypatch):
    """OTEL_* set in the spec is what each process's tracing setup reads (spans go to OTLP)."""
    from tandem.telemetry.tracing import configured_exporters

    otel = [{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector.monitoring:4317"}]
    objects = _render({"model": MODEL, "router": {"allowAnonymous": True, "env": otel},
                       "prefill": {"env": otel}, "decode": {"env": otel}})
    for name, pod in _pods(objects).items():
        env = {entry["name"]: entry["value"] for entry in pod["containers"][0]["env"]
               if "value" in entry}
        for key in [key for key in os.environ if key.startswith("OTEL_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert configured_exporters() == ["otlp"], name
