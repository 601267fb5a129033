"""A local cluster (router + prefill and decode workers as real processes) that faults can hit.

Unlike `tandem.local_cluster.LocalCluster`, every worker gets fixed ports chosen up front, so a
worker killed with SIGKILL restarts on the same address and the router's static discovery sees it
rejoin; each worker also serves Prometheus metrics on its own port. The router authenticates the
run's tenants from an API-key file, and router -> worker calls carry a worker token of the run.
"""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

from tandem.local_cluster import DEFAULT_UCX_ENV
from tandem.serving.process_group import ChildProcess, start_child, stop_children, wait_ready
from tandem.serving.worker_auth import bearer, read_token_file, write_token_file

@dataclass(slots=True)
class FaultClusterConfig:
    """What to start, and the timeouts that decide how faults play out."""

    model_dir: Path
    tenants: dict[str, str]  # tenant name -> API key
    num_prefill: int = 2
    num_decode: int = 2
    num_blocks: int = 512
    # A stalled peer fails a KV transfer after this long (shorter than most stalls).
    kv_timeout_s: float = 3.0
    # Reserved blocks nobody claims go back after this long (shorter than the longest stalls).
    lease_seconds: float = 5.0
    # Shorter uncached prompts are prefilled on the decode worker: both paths run.
    min_disaggregate_tokens: int = 32
    migration_limit: int = 3
    ready_timeout_s: float = 180.0
    env: dict[str, str] = field(default_factory=dict)


class FaultCluster:
    """Starts the cluster and kills, restarts, stops and continues its workers by name."""

    def __init__(self, config: FaultClusterConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**DEFAULT_UCX_ENV, "OMP_NUM_THREADS": "1", **config.env}
        token_file = self.run_dir / "worker-token"
        self.worker_token_file = token_file if token_file.exists() else write_token_file(token_file)
        self.workers: dict[str, ChildProcess] = {}
        self.router: ChildProcess | None = None
        self._args: dict[str, list[str]] = {}
        self._grpc_ports: dict[str, int] = {}
        self._metrics_ports: dict[str, int] = {}
        self.stalled: set[str] = set()

    # Life ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Starts every worker, waits for them, then the router."""
        names = ([f"prefill-{i}" for i in range(self.config.num_prefill)]
                 + [f"decode-{i}" for i in range(self.config.num_decode)])
        ports = free_ports(2 * len(names))
        for index, name in enumerate(names):
            self._grpc_ports[name], self._metrics_ports[name] = ports[2 * index], ports[2 * index + 1]
            self._args[name] = self._worker_args(name)
            self.workers[name] = start_child(name, self._args[name], self.run_dir, self.env)
        wait_ready(list(self.workers.values()), self.config.ready_timeout_s)
        self.router = start_child("router", self._router_args(), self.run_dir, self.env)
        wait_ready([self.router], self.config.ready_timeout_s)

    def stop(self) -> None:
        """Continues stalled workers, then stops the router and the workers."""
        for name in list(self.stalled):
            self.resume(name)
        if self.router is not None:
            stop_children([self.router])
        stop_children(list(self.workers.values()))

    def __enter__(self) -> FaultCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # Faults -------------------------------------------------------------------------------
    def kill(self, name: str) -> None:
        """SIGKILL: the worker dies with whatever it held."""
        child = self.workers[name]
        child.process.kill()
        child.process.wait()

    def restart(self, name: str) -> None:
        """Starts the worker again on the same ports and waits until it is ready."""
        child = start_child(name, self._args[name], self.run_dir, self.env)
        self.workers[name] = child
        wait_ready([child], self.config.ready_timeout_s)

    def stall(self, name: str) -> None:
        """SIGSTOP: the worker and its UCX endpoint stop answering, connections stay open."""
        os.kill(self.workers[name].process.pid, signal.SIGSTOP)
        self.stalled.add(name)

    def resume(self, name: str) -> None:
        """SIGCONT after stall()."""
        os.kill(self.workers[name].process.pid, signal.SIGCONT)
        self.stalled.discard(name)

    # Addresses ----------------------------------------------------------------------------
    @property
    def worker_names(self) -> list[str]:
        """Every worker's name, prefill first."""
        return list(self.workers)

    def address(self, name: str) -> str:
        """host:port of a worker's gRPC API (the same across restarts)."""
        return f"127.0.0.1:{self._grpc_ports[name]}"

    def metrics_url(self, name: str) -> str:
        """A worker's Prometheus endpoint."""
        return f"http://127.0.0.1:{self._metrics_ports[name]}/metrics"

    @property
    def grpc_address(self) -> str:
        """host:port of the router's gRPC API."""
        return f"127.0.0.1:{self.router.ready['grpc_port']}"

    @property
    def http_url(self) -> str:
        """Base URL of the router's OpenAI-compatible API."""
        return f"http://127.0.0.1:{self.router.ready['http_port']}/v1"

    @property
    def router_metrics_url(self) -> str:
        """The router's Prometheus endpoint."""
        return f"http://127.0.0.1:{self.router.ready['metrics_port']}/metrics"

    def worker_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata that authenticates the harness's own calls to workers (GetLoad)."""
        return (bearer(read_token_file(self.worker_token_file)),)

    # Arguments ----------------------------------------------------------------------------
    def _worker_args(self, name: str) -> list[str]:
        role = name.split("-")[0]
        config = self.config
        args = [role, "--model", str(config.model_dir), "--host", "127.0.0.1",
                "--worker-token-file", str(self.worker_token_file),
                "--grpc-port", str(self._grpc_ports[name]),
                "--metrics-port", str(self._metrics_ports[name]), "--worker-id", name,
                "--num-blocks", str(config.num_blocks), "--block-size", "16",
                "--kv-timeout", str(config.kv_timeout_s), "--drain-seconds", "1",
                # Freed blocks hold a pattern that is checked when they are taken again.
                "--debug-kv-canary"]
        if role == "decode":
            args += ["--kv-host", "127.0.0.1", "--kv-port", "0"]
        return args

    def _router_args(self) -> list[str]:
        config = self.config
        keys = self.run_dir / "api-keys.yaml"
        keys.write_text("tenants:\n" + "".join(f"  - name: {tenant}\n    api_keys: [{key}]\n"
                                                for tenant, key in config.tenants.items()))
        names = self.worker_names
        args = ["router", "--model", str(config.model_dir), "--host", "127.0.0.1",
                "--worker-token-file", str(self.worker_token_file),
                "--grpc-port", "0", "--http-port", "0", "--discovery", "static",
                "--prefill-workers", ",".join(self.address(n) for n in names if n.startswith("prefill")),
                "--decode-workers", ",".join(self.address(n) for n in names if n.startswith("decode")),
                "--api-keys", str(keys),
                "--min-disaggregate-tokens", str(config.min_disaggregate_tokens),
                "--lease-seconds", str(config.lease_seconds),
                "--migration-limit", str(config.migration_limit)]
        return args


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held together while chosen, so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
