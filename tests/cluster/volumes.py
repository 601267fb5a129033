"""The kubelet's volume manager: turns a pod's volumes into host folders and its mounts into a plan.

ConfigMap and Secret volumes are written the way the kubelet's atomic writer lays them out (files
in a timestamped folder, `..data` pointing at it, each key a link through `..data`), so consumers
meet the real shape. A PersistentVolumeClaim is a host folder the test names for the claim; the
claim object must exist in the API, as must every ConfigMap and Secret that is not optional.
"""

from __future__ import annotations

import base64
import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cluster.api import CONFIGMAPS, PVCS, SECRETS, Api

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class VolumeError(Exception):
    """A volume cannot be set up yet (the pod waits in ContainerCreating)."""


@dataclass(slots=True, frozen=True)
class Mount:
    """One mount in a container's filesystem."""

    kind: str  # "bind" or "tmpfs"
    source: str
    target: str
    read_only: bool

    def as_spec(self) -> dict[str, Any]:
        """The form pod_init reads."""
        return {"kind": self.kind, "source": self.source, "target": self.target,
                "read_only": self.read_only}


@dataclass(slots=True, frozen=True)
class ServiceAccountFiles:
    """What the kubelet projects into pods that mount their service account token."""

    token: str
    ca_cert: bytes


@dataclass(slots=True)
class VolumeManager:
    """Prepares one pod's volumes under its own folder."""

    api: Api
    pod: dict[str, Any]
    pod_dir: Path
    claims: Mapping[tuple[str, str], Path]
    service_account: ServiceAccountFiles

    @property
    def namespace(self) -> str:
        """The pod's namespace."""
        return self.pod["metadata"]["namespace"]

    def prepare(self) -> dict[str, Mount]:
        """Host sources of every volume by name (raises VolumeError while one is missing)."""
        sources: dict[str, Mount] = {}
        for volume in self.pod["spec"].get("volumes") or []:
            sources[volume["name"]] = self._source(volume)
        if self.pod["spec"].get("automountServiceAccountToken", True):
            sources["kube-api-access"] = Mount("bind", str(self._service_account()),
                                               SERVICE_ACCOUNT_DIR, True)
        return sources

    def mounts(self, container: dict[str, Any], sources: dict[str, Mount],
               pod_address: str) -> list[Mount]:
        """The container's mounts: its volumeMounts, the token, and /etc/hosts."""
        mounts = []
        for entry in container.get("volumeMounts") or []:
            source = sources[entry["name"]]
            path = source.source
            if entry.get("subPath"):
                path = os.path.join(path, entry["subPath"])
            mounts.append(Mount(source.kind, path, entry["mountPath"],
                                bool(entry.get("readOnly")) or source.read_only))
        if "kube-api-access" in sources:
            mounts.append(sources["kube-api-access"])
        mounts.append(Mount("bind", str(self._hosts_file(pod_address)), "/etc/hosts", False))
        return mounts

    def _source(self, volume: dict[str, Any]) -> Mount:
        name, folder = volume["name"], self.pod_dir / "volumes" / volume["name"]
        if "emptyDir" in volume:
            if (volume["emptyDir"] or {}).get("medium") == "Memory":
                return Mount("tmpfs", "", "", False)
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o777)  # emptyDir is world-writable, as the kubelet makes it
            return Mount("bind", str(folder), "", False)
        if "configMap" in volume:
            ref = volume["configMap"]
            obj = self.api.get(CONFIGMAPS, self.namespace, ref["name"])
            files = None if obj is None else {
                **{k: v.encode() for k, v in (obj.get("data") or {}).items()},
                **{k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}}
            return self._projected(name, "configmap", ref, files, folder)
        if "secret" in volume:
            ref = volume["secret"]
            obj = self.api.get(SECRETS, self.namespace, ref["secretName"])
            files = None if obj is None else {
                **{k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()},
                **{k: v.encode() for k, v in (obj.get("stringData") or {}).items()}}
            return self._projected(name, "secret", {**ref, "name": ref["secretName"]}, files,
                                   folder)
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if self.api.get(PVCS, self.namespace, claim) is None:
                raise VolumeError(f'persistentvolumeclaim "{claim}" not found')
            host = self.claims.get((self.namespace, claim))
            if host is None:
                raise VolumeError(f'persistentvolumeclaim "{claim}" is not bound')
            return Mount("bind", str(host), "", bool(volume["persistentVolumeClaim"].get("readOnly")))
        if "hostPath" in volume:
            path = volume["hostPath"]["path"]
            if volume["hostPath"].get("type") == "Directory" and not os.path.isdir(path):
                raise VolumeError(f"hostPath type check failed: {path} is not a directory")
            return Mount("bind", path, "", False)
        raise VolumeError(f"volume {name}: this test cluster supports emptyDir, configMap, secret, "
                          "persistentVolumeClaim and hostPath volumes")

    def _projected(self, name: str, kind: str, ref: dict[str, Any],
                   files: dict[str, bytes] | None, folder: Path) -> Mount:
        if files is None:
            if ref.get("optional"):
                files = {}
            else:
                raise VolumeError(f'MountVolume.SetUp failed for volume "{name}" : '
                                  f'{kind} "{ref["name"]}" not found')
        if ref.get("items"):
            files = {item["path"]: files[item["key"]] for item in ref["items"] if item["key"] in files}
        write_atomic(folder, files, ref.get("defaultMode", 0o644), self._fs_group)
        return Mount("bind", str(folder), "", True)

    @property
    def _fs_group(self) -> int | None:
        return (self.pod["spec"].get("securityContext") or {}).get("fsGroup")

    def _service_account(self) -> Path:
        folder = self.pod_dir / "volumes" / "kube-api-access"
        write_atomic(folder, {"token": self.service_account.token.encode(),
                              "ca.crt": self.service_account.ca_cert,
                              "namespace": self.namespace.encode()}, 0o644, self._fs_group)
        return folder

    def _hosts_file(self, pod_address: str) -> Path:
        path = self.pod_dir / "etc-hosts"
        hostname = self.pod["metadata"]["name"]
        path.write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{pod_address}\t{hostname}\n")
        return path


def write_atomic(folder: Path, files: dict[str, bytes], mode: int, group: int | None) -> None:
    """Writes files as the kubelet's atomic writer does: `..<time>/KEY`, `..data`, `KEY -> ..data/KEY`;
    with the pod's fsGroup as their group, as the kubelet sets it."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("..%Y_%m_%d_%H_%M_%S.%f")
    payload = folder / stamp
    payload.mkdir()
    for key, content in files.items():
        target = payload / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)
        if group is not None:
            os.chown(target, 0, group)
    payload.chmod(0o755)
    link = folder / "..data_tmp"
    link.symlink_to(stamp)
    link.rename(folder / "..data")
    for key in files:
        top = key.split("/")[0]
        if not (folder / top).is_symlink():
            (folder / top).symlink_to(f"..data/{top}")
