"""The container runtime: a container's command line and environment, run as a local process.

The one image is this repository: the container's command runs with the image's environment (its
PATH leads to this checkout's virtualenv, where `tandem` lives) and its user (10001), inside the
pod's network namespace and a mount namespace built by `pod_init`. Environment variables and
`$(VAR)` references in command and args are resolved as the kubelet resolves them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster.api import CONFIGMAPS, SECRETS, Api
from tests.cluster.volumes import Mount

POD_INIT = Path(__file__).with_name("pod_init.py")
REPO = Path(__file__).resolve().parents[2]
VAR_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


@dataclass(slots=True, frozen=True)
class Image:
    """What the Dockerfile's image provides: entrypoint, environment, user, working folder."""

    entrypoint: tuple[str, ...] = ("tandem",)
    env: tuple[tuple[str, str], ...] = (
        ("PATH", f"{REPO / '.venv' / 'bin'}:/usr/local/bin:/usr/bin:/bin"),
        ("HOME", "/tmp"), ("PYTHONUNBUFFERED", "1"))
    user: int = 10001
    working_dir: str = "/"
    # Host folders the image holds that the pod would not otherwise see (see `_carried_paths`).
    carried: tuple[str, ...] = field(default_factory=lambda: _carried_paths())


def _carried_paths() -> tuple[str, ...]:
    # The interpreter when a parent folder is closed to the pod's user; the checkout (the image's
    # code and virtualenv) when it lies in a folder an image holds empty.
    carried = []
    prefix = os.path.realpath(sys.base_prefix)
    parts = prefix.split("/")
    if any(not os.stat("/".join(parts[:depth])).st_mode & 0o001 for depth in range(2, len(parts))):
        carried.append(prefix)
    if REPO.parts[1] in ("tmp", "run"):
        carried.append(str(REPO))
    return tuple(carried)


class EnvError(Exception):
    """An env entry refers to a missing ConfigMap/Secret key (CreateContainerConfigError)."""


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: known variables are replaced, `$$` is a literal `$`,
    unknown references stay as written."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return VAR_REFERENCE.sub(replace, text)


def container_env(api: Api, pod: dict[str, Any], container: dict[str, Any], image: Image,
                  cluster_env: dict[str, str]) -> dict[str, str]:
    """The process environment: image, cluster (service host), envFrom, then env in order."""
    env = dict(image.env)
    env["HOSTNAME"] = pod["metadata"]["name"]
    env.update(cluster_env)
    namespace = pod["metadata"]["namespace"]
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef") or source.get("secretRef") or {}
        data = _data(api, CONFIGMAPS if "configMapRef" in source else SECRETS, namespace, ref["name"])
        if data is None and not ref.get("optional"):
            raise EnvError(f"{ref['name']} not found")
        env.update({source.get("prefix", "") + key: value for key, value in (data or {}).items()})
    for entry in container.get("env") or []:
        if "value" in entry:
            env[entry["name"]] = expand(entry["value"], env)
        elif "valueFrom" in entry:
            value = _value_from(api, pod, entry["valueFrom"])
            if value is not None:
                env[entry["name"]] = value
        else:
            env[entry["name"]] = ""
    return env


def _value_from(api: Api, pod: dict[str, Any], source: dict[str, Any]) -> str | None:
    if "fieldRef" in source:
        path = source["fieldRef"]["fieldPath"]
        fields = {"metadata.name": pod["metadata"]["name"],
                  "metadata.namespace": pod["metadata"]["namespace"],
                  "metadata.uid": pod["metadata"].get("uid", ""),
                  "spec.nodeName": pod["spec"].get("nodeName", ""),
                  "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
                  "status.podIP": (pod.get("status") or {}).get("podIP", ""),
                  "status.hostIP": (pod.get("status") or {}).get("hostIP", "")}
        if path not in fields:
            raise EnvError(f"unsupported fieldPath {path}")
        return fields[path]
    for key, resource in (("configMapKeyRef", CONFIGMAPS), ("secretKeyRef", SECRETS)):
        if key in source:
            ref = source[key]
            data = _data(api, resource, pod["metadata"]["namespace"], ref["name"]) or {}
            if ref["key"] not in data and not ref.get("optional"):
                raise EnvError(f"couldn't find key {ref['key']} in {ref['name']}")
            return data.get(ref["key"])
    raise EnvError(f"unsupported valueFrom {sorted(source)}")


def _data(api: Api, resource: Any, namespace: str, name: str) -> dict[str, str] | None:
    obj = api.get(resource, namespace, name)
    if obj is None:
        return None
    if resource == SECRETS:
        return {**{k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()},
                **(obj.get("stringData") or {})}
    return dict(obj.get("data") or {})


def command_line(container: dict[str, Any], image: Image, env: dict[str, str]) -> list[str]:
    """command + args, with the image's entrypoint when command is unset, `$(VAR)` expanded."""
    command = container.get("command") or list(image.entrypoint)
    args = container.get("args") or []
    return [expand(part, env) for part in [*command, *args]]


@dataclass(slots=True)
class ContainerProcess:
    """One run of a container: the local process and its log file."""

    process: subprocess.Popen
    log_path: Path

    @classmethod
    def start(cls, *, netns: str, pod: dict[str, Any], container: dict[str, Any], image: Image,
              env: dict[str, str], mounts: list[Mount], run_dir: Path, log_path: Path) -> ContainerProcess:
        """Starts the container in the pod's network namespace and a fresh mount namespace."""
        security = {**(pod["spec"].get("securityContext") or {}),
                    **(container.get("securityContext") or {})}
        user = security.get("runAsUser", image.user)
        group = security.get("runAsGroup", user)
        groups = [group] + ([security["fsGroup"]] if security.get("fsGroup") not in (None, group) else [])
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "root").mkdir(exist_ok=True)
        (run_dir / "scratch").mkdir(exist_ok=True)
        spec = {
            "root": str(run_dir / "root"), "scratch": str(run_dir / "scratch"),
            "carried": list(image.carried), "mounts": [mount.as_spec() for mount in mounts],
            "hostname": pod["metadata"]["name"],
            "read_only_root": bool(security.get("readOnlyRootFilesystem")),
            "working_dir": container.get("workingDir") or image.working_dir,
            "user": user, "group": group, "groups": groups,
            "no_new_privs": security.get("allowPrivilegeEscalation") is False,
            "argv": command_line(container, image, env), "env": env,
        }
        spec_path = run_dir / "pod-init.json"
        spec_path.write_text(json.dumps(spec, indent=1))
        log = open(log_path, "ab")
        try:
            process = subprocess.Popen(
                ["ip", "netns", "exec", netns, "unshare", "--mount", "--uts", "--ipc", "--pid",
                 "--fork", "--kill-child=SIGKILL", "--mount-proc", "--propagation", "private",
                 sys.executable, "-I", str(POD_INIT), str(spec_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            log.close()
        return cls(process, log_path)

    @property
    def exit_code(self) -> int | None:
        """The exit status once the process has ended (128+N for signal N), else None."""
        code = self.process.poll()
        if code is None:
            return None
        return 128 - code if code < 0 else code

    @property
    def pid(self) -> int:
        """The container's main process (PID 1 of the pod's PID namespace), seen from the host;
        the `unshare` that started it until it has forked."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            first = children.read_text().split()
        except OSError:
            return self.process.pid
        return int(first[0]) if first else self.process.pid

    def signal(self, number: int) -> None:
        """Sends a signal to the container's main process."""
        if self.process.poll() is None:
            try:
                os.kill(self.pid, number)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL (the namespace's PID 1 takes every process of the pod with it), then reap."""
        self.signal(signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()  # not forked yet: --kill-child does the rest
        self.process.wait(timeout=30)
