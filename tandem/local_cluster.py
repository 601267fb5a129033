"""`tandem serve`: a router and N prefill + M decode workers as local processes, per model tier.

One tier (`--model`, `--prefill`, `--decode`) or several (`--tier NAME=MODEL[:prefill=N,decode=M]`
repeated, with `--policy` and `--estimator` to route between them): each tier's workers serve its
model under the tier's name, and the one router serves every tier. KV moves between the workers
over UCX on loopback. The cluster waits until every component is
ready, prints where to connect, and stops everything cleanly on Ctrl-C. Router -> worker calls
carry a worker token: $TANDEM_WORKER_TOKEN_FILE's, or a new one written to the run folder (mode
0600). Tests and the demo use `LocalCluster` directly.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tandem.serving.process_group import ChildProcess, start_child, stop_children, wait_ready
from tandem.serving.worker_args import resolve_model_dir
from tandem.serving.worker_auth import TOKEN_ENV, read_token_file, write_token_file

log = logging.getLogger(__name__)

# UCX over TCP on loopback works everywhere; shared memory ("sm,self") is faster where allowed.
DEFAULT_UCX_ENV = {"UCX_TLS": "tcp,self", "UCX_NET_DEVICES": "lo", "UCX_WARN_UNUSED_ENV_VARS": "n"}
TIER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(slots=True)
class TierConfig:
    """One model tier: its served name, model and pool sizes."""

    name: str
    model: str
    num_prefill: int = 1
    num_decode: int = 1

    def __post_init__(self) -> None:
        if not TIER_NAME.fullmatch(self.name):
            raise ValueError(f"tier name {self.name!r}: use letters, digits, '.', '_' and '-'")
        if self.num_prefill < 0 or self.num_decode < 1:
            raise ValueError(f"tier {self.name}: need at least one decode worker and no negative "
                             f"pool size, got prefill={self.num_prefill} decode={self.num_decode}")


@dataclass(slots=True)
class LocalClusterConfig:
    """What to start: one tier (model, num_prefill, num_decode) or several (tiers)."""

    model: str = "tiny"
    num_prefill: int = 1
    num_decode: int = 1
    # Several tiers; when given, model, num_prefill and num_decode are not used.
    tiers: list[TierConfig] = field(default_factory=list)
    grpc_port: int = 0
    http_port: int = 0
    num_blocks: int = 512
    block_size: int = 16
    # 0: every request with a prefill worker available is disaggregated (shows the KV path).
    min_disaggregate_tokens: int = 0
    router_args: list[str] = field(default_factory=list)
    worker_args: list[str] = field(default_factory=list)
    prefill_args: list[str] = field(default_factory=list)
    decode_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 180.0
    # The file with the worker token; None: $TANDEM_WORKER_TOKEN_FILE, else a new one in the run folder.
    worker_token_file: str | None = None

    def __post_init__(self) -> None:
        if self.num_prefill < 0 or self.num_decode < 1:
            raise ValueError(f"need at least one decode worker and no negative pool size, got "
                             f"prefill={self.num_prefill} decode={self.num_decode}")
        names = [tier.name for tier in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")


class LocalCluster:
    """Starts, describes and stops a local cluster (a context manager)."""

    def __init__(self, config: LocalClusterConfig, run_dir: Path | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir or tempfile.mkdtemp(prefix="tandem-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Tier name (None: the single tier, served under its folder's name) -> model folder.
        self.model_dirs = ({tier.name: resolve_model_dir(tier.model) for tier in config.tiers}
                           if config.tiers else {None: resolve_model_dir(config.model)})
        self.model_dir = next(iter(self.model_dirs.values()))
        self.worker_token_file = self._worker_token_file()
        self.prefill: list[ChildProcess] = []
        self.decode: list[ChildProcess] = []
        # Tier name -> its workers (prefill and decode).
        self.tier_workers: dict[str | None, list[ChildProcess]] = {}
        self.router: ChildProcess | None = None

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        """Starts the workers, waits for them, then starts the router and waits for it."""
        env = {**DEFAULT_UCX_ENV, **self.config.env}
        for tier_name, num_prefill, num_decode in self.pools():
            workers = self.tier_workers.setdefault(tier_name, [])
            for role, count, started in (("decode", num_decode, self.decode),
                                         ("prefill", num_prefill, self.prefill)):
                for index in range(count):
                    name = f"{tier_name}-{role}-{index}" if tier_name else f"{role}-{index}"
                    child = start_child(name, self._worker_args(role, name, tier_name),
                                        self.run_dir, env)
                    started.append(child)
                    workers.append(child)
        wait_ready(self.prefill + self.decode, self.config.ready_timeout_s)
        self.router = start_child("router", self._router_args(), self.run_dir, env)
        wait_ready([self.router], self.config.ready_timeout_s)

    def stop(self) -> None:
        """Stops the router first (no new work), then the workers."""
        if self.router is not None:
            stop_children([self.router])
        stop_children(self.prefill + self.decode)

    @property
    def worker_token(self) -> str:
        """The token that calls to this cluster's workers must carry."""
        return read_token_file(self.worker_token_file)

    @property
    def grpc_address(self) -> str:
        """host:port of the router's gRPC API."""
        return f"127.0.0.1:{self.router.ready['grpc_port']}"

    @property
    def http_url(self) -> str:
        """Base URL of the router's OpenAI-compatible API."""
        return f"http://127.0.0.1:{self.router.ready['http_port']}/v1"

    def worker_address(self, child: ChildProcess) -> str:
        """host:port of a worker's gRPC API."""
        return f"127.0.0.1:{child.ready['grpc_port']}"

    def _worker_token_file(self) -> Path:
        chosen = self.config.worker_token_file or os.environ.get(TOKEN_ENV)
        if chosen:
            return Path(chosen)
        path = self.run_dir / "worker-token"
        return path if path.exists() else write_token_file(path)

    def pools(self) -> list[tuple[str | None, int, int]]:
        """(tier name, prefill workers, decode workers) per tier; None names the single tier."""
        if self.config.tiers:
            return [(t.name, t.num_prefill, t.num_decode) for t in self.config.tiers]
        return [(None, self.config.num_prefill, self.config.num_decode)]

    def _worker_args(self, role: str, worker_id: str, tier_name: str | None) -> list[str]:
        args = [role, "--model", str(self.model_dirs[tier_name]), "--host", "127.0.0.1",
                "--grpc-port", "0", "--worker-token-file", str(self.worker_token_file),
                "--worker-id", worker_id, "--num-blocks", str(self.config.num_blocks),
                "--block-size", str(self.config.block_size), *self.config.worker_args]
        if tier_name is not None:
            args += ["--model-name", tier_name]
        if role == "decode":
            args += ["--kv-host", "127.0.0.1", "--kv-port", "0", *self.config.decode_args]
        else:
            args += self.config.prefill_args
        return args

    def _router_args(self) -> list[str]:
        models = (["--model", str(self.model_dir)] if None in self.model_dirs else
                  [arg for name, folder in self.model_dirs.items()
                   for arg in ("--tier", f"{name}={folder}")])
        return ["router", *models, "--host", "127.0.0.1",
                "--worker-token-file", str(self.worker_token_file),
                "--grpc-port", str(self.config.grpc_port), "--http-port", str(self.config.http_port),
                "--discovery", "static",
                "--prefill-workers", ",".join(self.worker_address(c) for c in self.prefill),
                "--decode-workers", ",".join(self.worker_address(c) for c in self.decode),
                "--allow-anonymous", "--min-disaggregate-tokens",
                str(self.config.min_disaggregate_tokens), *self.config.router_args]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tandem serve`."""
    parser.add_argument("--model", default="tiny", help="model folder, or 'tiny' (generated)")
    parser.add_argument("--prefill", type=int, default=1, help="prefill workers")
    parser.add_argument("--decode", type=int, default=1, help="decode workers")
    parser.add_argument("--tier", action="append", default=[], type=parse_tier,
                        metavar="NAME=MODEL[:prefill=N,decode=M]",
                        help="a model tier with its own workers (default 1 prefill, 1 decode), "
                             "served as NAME; repeat for several (instead of --model, --prefill "
                             "and --decode)")
    parser.add_argument("--policy", default=None,
                        help="routing policy YAML whose bands name the tiers (needs --estimator)")
    parser.add_argument("--estimator", default=None, help="trained difficulty estimator folder")
    parser.add_argument("--grpc-port", type=int, default=50051, help="router gRPC port")
    parser.add_argument("--http-port", type=int, default=8000, help="router HTTP port")
    parser.add_argument("--num-blocks", type=int, default=512, help="KV blocks per worker")
    parser.add_argument("--ucx-tls", default=os.environ.get("UCX_TLS", DEFAULT_UCX_ENV["UCX_TLS"]),
                        help="UCX transports for KV transfer (UCX_TLS)")
    parser.add_argument("--run-dir", default=None, help="where logs go (default: a temp folder)")
    parser.add_argument("--migration-limit", type=int, default=3,
                        help="times each sample may move to another decode worker when its own is "
                             "lost mid-stream (the router's flag; 0 = never)")
    parser.add_argument("--worker-token-file", default=os.environ.get(TOKEN_ENV),
                        help="file with the token worker calls carry (default: a new one in the run folder)")


def run(args: argparse.Namespace) -> int:
    """Starts the cluster and blocks until Ctrl-C or SIGTERM."""
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    router_args = ["--migration-limit", str(args.migration_limit)]
    for flag, value in (("--policy", args.policy), ("--estimator", args.estimator)):
        if value is not None:
            router_args += [flag, value]
    config = LocalClusterConfig(model=args.model, num_prefill=args.prefill, num_decode=args.decode,
                                tiers=args.tier, grpc_port=args.grpc_port,
                                http_port=args.http_port, num_blocks=args.num_blocks,
                                env={"UCX_TLS": args.ucx_tls}, router_args=router_args,
                                worker_token_file=args.worker_token_file)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with LocalCluster(config, Path(args.run_dir) if args.run_dir else None) as cluster:
        pools = ", ".join(f"{name or cluster.model_dir.name}: {p} prefill + {d} decode"
                          for name, p, d in cluster.pools())
        print(f"Tandem is ready ({pools})\n"
              f"  gRPC     {cluster.grpc_address}   (tandem generate --router {cluster.grpc_address} 'Hi')\n"
              f"  OpenAI   {cluster.http_url}\n"
              f"  logs     {cluster.run_dir}\n"
              f"  token    {cluster.worker_token_file}   (calls to the workers need it)\n"
              f"Press Ctrl-C to stop.", flush=True)
        stop.wait()
        print("stopping...", flush=True)
    return 0


def parse_tier(text: str) -> TierConfig:
    """`NAME=MODEL[:prefill=N,decode=M]` (the --tier flag) as a TierConfig."""
    name, _, model = text.partition("=")
    sizes: dict[str, int] = {}
    head, colon, options = model.rpartition(":")
    if colon and re.fullmatch(r"(prefill|decode)=\d+(,(prefill|decode)=\d+)?", options):
        model = head
        sizes = {key: int(value) for key, value in (o.split("=") for o in options.split(","))}
    if not name or not model:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=MODEL[:prefill=N,decode=M]")
    try:
        return TierConfig(name, model, num_prefill=sizes.get("prefill", 1),
                          num_decode=sizes.get("decode", 1))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
