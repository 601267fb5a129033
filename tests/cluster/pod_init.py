"""Runs inside a new mount, UTS and IPC namespace: builds the pod's filesystem view, then execs the container.

The kubelet starts `ip netns exec POD unshare --mount --uts --ipc python pod_init.py SPEC.json`.
The root is a fresh tmpfs holding bind mounts of the host's top-level folders (standing in for
the image) minus /tmp and /run (empty, as in an image); volumes are mounted at their mountPaths; then the
carried paths (the interpreter, and the checkout when it lies under /tmp or /run) are bound in.
A mountPath whose parent lies in a host folder gets an overlay on that parent first, so creating
the mountpoint never writes to the host. Then: read-only root if asked, hostname, chroot, and
exec through `setpriv` as the pod's user. Standard library only: it runs before anything else.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

EMPTY_IN_IMAGE = {"tmp": 0o1777, "run": 0o755}


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pod_init: mount {' '.join(args)}: {done.stderr.strip()}")


class RootBuilder:
    """The pod's root folder and the mounts that make it up."""

    def __init__(self, root: str, scratch: str) -> None:
        self.root = root
        self.scratch = scratch
        self.root_mounts: list[str] = [root]  # what a read-only root filesystem remounts read-only
        self._num_overlays = 0
        self._writable: set[str] = set()  # folders whose content the pod may change (volumes)

    def build_image(self, carried: list[str]) -> None:
        """Mounts a tmpfs root and carries the host's top-level folders into it; of a top-level
        folder that holds a `carried` path (e.g. a Python under /root), only that path."""
        _mount("-t", "tmpfs", "-o", "mode=755", "pod-root", self.root)
        _mount("-t", "tmpfs", "-o", "mode=700", "pod-scratch", self.scratch)
        self._root_dev = os.stat(self.root).st_dev
        partial = {path.split("/")[1] for path in carried}
        for entry in sorted(os.listdir("/")):
            source, target = f"/{entry}", os.path.join(self.root, entry)
            if os.path.islink(source):
                os.symlink(os.readlink(source), target)
            elif os.path.isdir(source):
                os.mkdir(target)
                if entry in EMPTY_IN_IMAGE:
                    os.chmod(target, EMPTY_IN_IMAGE[entry])
                elif entry in partial:
                    os.chmod(target, 0o711)
                else:
                    _mount("--rbind", source, target)
                    self.root_mounts.append(target)

    def carry(self, carried: list[str]) -> None:
        """Binds each carried host path at the same path in the pod. Runs after the volumes, so a
        checkout under /tmp stays visible beneath the pod's own /tmp volume."""
        for path in carried:
            target = self.in_root(path)
            self._ensure(target, is_file=False)
            _mount("--rbind", path, target)
            self.root_mounts.append(target)

    def add_volume(self, mount: dict) -> None:
        """Mounts one volume (bind of a host path, or a tmpfs) at its mountPath."""
        target = self.in_root(mount["target"])
        is_file = mount["kind"] == "bind" and os.path.isfile(mount["source"])
        self._ensure(target, is_file)
        if mount["kind"] == "tmpfs":
            _mount("-t", "tmpfs", "-o", "mode=1777", "pod-memory", target)
        else:
            _mount("--bind", mount["source"], target)
            if mount["read_only"]:
                _mount("-o", "remount,bind,ro", target)
        if not is_file:
            self._writable.add(target)

    def in_root(self, path: str) -> str:
        """The host path of `path` as the pod sees it: symlinks resolve against the new root,
        as they will after chroot (/var/run -> /run must not lead to the host's /run)."""
        parts = [part for part in path.split("/") if part]
        resolved, num_links = "", 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                resolved = resolved.rpartition("/")[0]
                continue
            if part == ".":
                continue
            candidate = f"{resolved}/{part}"
            if not os.path.islink(self.root + candidate):
                resolved = candidate
                continue
            num_links += 1
            if num_links > 40:
                raise SystemExit(f"pod_init: too many symbolic links in {path}")
            link = os.readlink(self.root + candidate)
            parts = [p for p in link.split("/") if p] + parts
            if link.startswith("/"):
                resolved = ""
        return self.root + resolved

    def make_read_only(self) -> None:
        """Remounts the image part of the root read-only (volumes keep their own mode)."""
        for target in self.root_mounts:
            options = "remount,ro" if target == self.root else "remount,bind,ro"
            _mount("-o", options, target)

    def _ensure(self, path: str, is_file: bool) -> None:
        if os.path.lexists(path):
            return
        parent = os.path.dirname(path)
        self._ensure(parent, is_file=False)
        if not self._is_ours(parent):
            self._overlay(parent)
        if is_file:
            open(path, "a").close()
        else:
            os.mkdir(path)

    def _is_ours(self, folder: str) -> bool:
        if os.stat(folder).st_dev == self._root_dev and folder.startswith(self.root):
            return True
        return any(folder == mine or folder.startswith(mine + "/") for mine in self._writable)

    def _overlay(self, folder: str) -> None:
        self._num_overlays += 1
        upper = os.path.join(self.scratch, f"upper{self._num_overlays}")
        work = os.path.join(self.scratch, f"work{self._num_overlays}")
        os.mkdir(upper)
        os.mkdir(work)
        _mount("-t", "overlay", "pod-overlay", "-o",
               f"lowerdir={folder},upperdir={upper},workdir={work}", folder)
        self.root_mounts.append(folder)
        self._writable.add(folder)


def main(spec_path: str) -> None:
    """Builds the pod's root from the spec file and execs the container's process."""
    with open(spec_path) as handle:
        spec = json.load(handle)
    builder = RootBuilder(spec["root"], spec["scratch"])
    builder.build_image(spec["carried"])
    for mount in sorted(spec["mounts"], key=lambda m: m["target"].count("/")):
        builder.add_volume(mount)
    builder.carry(spec["carried"])
    if spec["read_only_root"]:
        builder.make_read_only()
    socket.sethostname(spec["hostname"])
    setpriv = shutil.which("setpriv", path="/usr/bin:/bin")
    os.chroot(spec["root"])
    os.chdir(spec["working_dir"])
    argv = list(spec["argv"])
    if spec["user"] is not None:
        groups = ",".join(str(group) for group in spec["groups"]) or "-"
        privs = [setpriv, f"--reuid={spec['user']}", f"--regid={spec['group']}",
                 f"--groups={groups}" if groups != "-" else "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all"]
        if spec["no_new_privs"]:
            privs.append("--no-new-privs")
        argv = [*privs, "--", *argv]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as exc:
        raise SystemExit(f"pod_init: cannot run {argv[0]!r}: {exc}") from None


if __name__ == "__main__":
    main(sys.argv[1])
