"""Child processes of the local cluster: start, wait until ready, stop cleanly."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tandem.serving.ready_file import read_ready_file

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ChildProcess:
    """One component running as a child process, with the ready file it writes."""

    name: str
    process: subprocess.Popen
    ready_file: Path
    log_path: Path
    ready: dict = field(default_factory=dict)

    @property
    def is_alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None


def start_child(name: str, tandem_args: list[str], run_dir: Path, env: dict[str, str]) -> ChildProcess:
    """Starts `tandem <args>` with a ready file and a log file in run_dir."""
    ready_file = run_dir / f"{name}.ready.json"
    log_path = run_dir / f"{name}.log"
    ready_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "tandem.cli", *tandem_args, "--ready-file", str(ready_file)]
    with open(log_path, "ab") as log_file:
        # A new session: Ctrl-C in the terminal reaches the parent only, which stops children in order.
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**os.environ, **env}, start_new_session=True)
    log.info("started %s (pid %d): %s", name, process.pid, " ".join(tandem_args))
    return ChildProcess(name, process, ready_file, log_path)


def wait_ready(children: list[ChildProcess], timeout_s: float) -> None:
    """Waits until every child has written its ready file; raises if one exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    pending = list(children)
    while pending:
        for child in list(pending):
            if not child.is_alive:
                raise RuntimeError(f"{child.name} exited with code {child.process.returncode} before "
                                   f"it was ready; last log lines:\n{tail(child.log_path)}")
            ready = read_ready_file(child.ready_file)
            if ready is not None:
                child.ready = ready
                pending.remove(child)
        if pending and time.monotonic() > deadline:
            names = ", ".join(child.name for child in pending)
            raise TimeoutError(f"not ready after {timeout_s:.0f}s: {names}; last log lines of "
                               f"{pending[0].name}:\n{tail(pending[0].log_path)}")
        time.sleep(0.05)


def stop_children(children: list[ChildProcess], grace_s: float = 10.0) -> None:
    """Sends SIGTERM to every child, then SIGKILL to any still running after grace_s."""
    for child in children:
        if child.is_alive:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs; killing it", child.name, grace_s)
            child.process.kill()
            child.process.wait()


def tail(path: Path, num_lines: int = 20) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-num_lines:])
    except FileNotFoundError:
        return "(no log)"
