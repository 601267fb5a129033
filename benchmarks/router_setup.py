"""What the router benchmark runs on: run sizes, clusters, and the processes LocalCluster does not start.

Token sources, the bare relay and a lone (optionally profiled) router run in their own session with
a ready file and a log in the run folder, like the local cluster's children, so `wait_ready` and
`stop_children` from tandem.serving.process_group apply to them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from tandem.local_cluster import LocalClusterConfig
from tandem.serving.process_group import ChildProcess

BENCHMARKS = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS.parent
READY_TIMEOUT_S = 120.0
# Requests whose prompt is shorter than this are prefilled on the decode worker: with a value this
# large every request is colocated, so the router and a direct Decode call do the same work.
ALWAYS_COLOCATED = 1 << 30
# One torch thread per worker: the machine has two cores for workers, router and client together.
CHILD_ENV = {"OMP_NUM_THREADS": "1"}


@dataclass(slots=True, frozen=True)
class Settings:
    """Sizes of one run (full or quick)."""

    concurrencies: tuple[int, ...]
    min_ttft_samples: int
    min_rounds: int
    max_tokens: int
    prompt_len: int
    relay_streams: int
    relay_max_tokens: int
    num_token_sources: int
    tokens_per_chunk: tuple[int, ...]
    warmup_s: float
    window_s: float
    relay_rounds: int
    num_real_workers: int

    def as_dict(self) -> dict:
        """The settings as JSON-friendly fields."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


FULL = Settings(concurrencies=(1, 32, 200), min_ttft_samples=300, min_rounds=6, max_tokens=32,
                prompt_len=32, relay_streams=128, relay_max_tokens=256, num_token_sources=2,
                tokens_per_chunk=(1, 8), warmup_s=1.5, window_s=5.0, relay_rounds=4, num_real_workers=2)
QUICK = Settings(concurrencies=(1, 8), min_ttft_samples=4, min_rounds=2, max_tokens=12,
                 prompt_len=16, relay_streams=16, relay_max_tokens=64, num_token_sources=1,
                 tokens_per_chunk=(1,), warmup_s=0.3, window_s=0.8, relay_rounds=1, num_real_workers=1)


def cluster_config(model_dir: Path, num_decode: int) -> LocalClusterConfig:
    """A router over num_decode decode workers, no prefill worker, every request colocated."""
    return LocalClusterConfig(
        model=str(model_dir), num_prefill=0, num_decode=num_decode, num_blocks=8192,
        min_disaggregate_tokens=ALWAYS_COLOCATED, ready_timeout_s=READY_TIMEOUT_S,
        # A short drain: streams the client cancels at the end of a window need not hold up the stop.
        worker_args=["--max-num-seqs", "256", "--max-num-batched-tokens", "4096", "--drain-seconds", "2",
                     "--log-level", "WARNING"],
        router_args=["--log-level", "WARNING"], env=dict(CHILD_ENV))


def subfolder(run_dir: Path, name: str) -> Path:
    """A new folder in the run folder."""
    path = run_dir / name
    path.mkdir()
    return path


def start_process(name: str, command: list[str], run_dir: Path) -> ChildProcess:
    """Starts command (which must accept --ready-file) with its log in run_dir."""
    ready_file = run_dir / f"{name}.ready.json"
    log_path = run_dir / f"{name}.log"
    ready_file.unlink(missing_ok=True)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen([*command, "--ready-file", str(ready_file)], cwd=REPO_ROOT,
                                   stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**os.environ, **CHILD_ENV}, start_new_session=True)
    return ChildProcess(name, process, ready_file, log_path)


def token_source_command(model_dir: Path, tokens_per_chunk: int) -> list[str]:
    """The command of a synthetic decode worker (router_token_source.py)."""
    return [sys.executable, str(BENCHMARKS / "router_token_source.py"), "--model", str(model_dir),
            "--tokens-per-chunk", str(tokens_per_chunk)]


def bare_relay_command(decode_addresses: list[str]) -> list[str]:
    """The command of the minimal grpc.aio relay (router_bare_relay.py)."""
    return [sys.executable, str(BENCHMARKS / "router_bare_relay.py"),
            "--decode-workers", ",".join(decode_addresses)]


def router_command(model_dir: Path, decode_addresses: list[str], worker_token_file: Path,
                   profile_dir: Path | None = None, plan: tuple[str, ...] = ()) -> list[str]:
    """A colocated-only router; with profile_dir, under router_profile's window profilers (plan).

    Token sources do not check the worker token; the router attaches it all the same, as it does
    in production.
    """
    args = ["router", "--model", str(model_dir), "--host", "127.0.0.1", "--grpc-port", "0",
            "--worker-token-file", str(worker_token_file),
            "--http-port", "0", "--discovery", "static", "--decode-workers", ",".join(decode_addresses),
            "--allow-anonymous", "--min-disaggregate-tokens", str(ALWAYS_COLOCATED),
            "--log-level", "WARNING"]
    if profile_dir is None:
        return [sys.executable, "-m", "tandem.cli", *args]
    return [sys.executable, str(BENCHMARKS / "router_profile.py"), "--out-dir", str(profile_dir),
            "--plan", ",".join(plan), "--", *args]


def address(child: ChildProcess) -> str:
    """host:port of a started child's gRPC port."""
    return f"127.0.0.1:{child.ready['grpc_port']}"


async def serve_until_signalled(server, port: int, ready_file: str) -> None:
    """Starts a grpc.aio server, writes its port to the ready file, and serves until SIGTERM."""
    import asyncio
    import signal

    from tandem.serving.ready_file import write_ready_file

    await server.start()
    write_ready_file(ready_file, grpc_port=port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0.5)

