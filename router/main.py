"""`tandem router`: the front door (gRPC + OpenAI HTTP) over the prefill and decode pools."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from router.admission import AdmittedService
from router.auth import Authenticator
from router.core import RouterCore
from router.dispatch import Dispatcher, DispatchSettings
from router.grpc_api import build_grpc_server
from router.http_api import build_http_app, start_http_server
from router.model_catalog import ModelCatalog, model_sources
from router.routing_brain import RoutingBrain
from router.tls import tls_from_args
from router.worker_pool import WorkerPool
from router.worker_sources import add_discovery_arguments, start_discovery
from tandem.policy.quota import QuotaConfig, QuotaPolicy
from tandem.policy.worker_choice import WorkerChoiceConfig
from tandem.serving.grpc_server import install_drain_on_sigterm
from tandem.serving.ready_file import write_ready_file
from tandem.serving.worker_args import configure_logging, resolve_model_dir
from tandem.serving.worker_auth import add_worker_auth_arguments, worker_token_from_args
from tandem.telemetry.metrics import default_metrics, start_metrics_server
from tandem.telemetry.tracing import setup_tracing

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tandem router`."""
    parser.add_argument("--model", default=None,
                        help="one tier's model folder (the router needs its tokenizer and chat "
                             "template), or 'tiny'; for several tiers use --tier")
    parser.add_argument("--model-name", default=None,
                        help="the --model tier's served name (default: folder name)")
    parser.add_argument("--tier", action="append", default=[], metavar="NAME=FOLDER",
                        help="a tier: the model name its workers announce, and the folder of its "
                             "tokenizer and chat template; once per tier (instead of --model)")
    parser.add_argument("--deployment-name", action="append", default=[], metavar="NAME",
                        help="a model name that, like 'auto', lets the routing policy choose the "
                             "tier (the deployment's own name); may be repeated")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--grpc-port", type=int, default=50051)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="separate Prometheus port; 0 serves /metrics on the HTTP port")
    add_discovery_arguments(parser)
    parser.add_argument("--api-keys", default=os.environ.get("TANDEM_API_KEYS"),
                        help="YAML/JSON file (or Secret folder) mapping API keys to tenants")
    parser.add_argument("--allow-anonymous", action="store_true",
                        help="accept requests without an API key (local use)")
    parser.add_argument("--policy", default=None,
                        help="routing and budget policy YAML (docs/difficulty-routing.md); needs "
                             "--estimator")
    parser.add_argument("--estimator", default=None,
                        help="folder of a trained difficulty estimator; needs --policy")
    parser.add_argument("--tls-cert", default=None)
    parser.add_argument("--tls-key", default=None)
    parser.add_argument("--price-prompt", type=float, default=0.0, help="price per 1k prompt tokens")
    parser.add_argument("--price-completion", type=float, default=0.0,
                        help="price per 1k generated tokens")
    parser.add_argument("--min-disaggregate-tokens", type=int, default=512,
                        help="uncached prompts shorter than this are prefilled on the decode worker")
    parser.add_argument("--lease-seconds", type=float, default=30.0,
                        help="how long a decode worker holds reserved KV blocks for a prefill")
    parser.add_argument("--max-attempts", type=int, default=3,
                        help="worker pairs tried per request before it fails with UNAVAILABLE")
    parser.add_argument("--migration-limit", type=_non_negative_int, default=3,
                        help="times each sample may move to another decode worker when its own is "
                             "lost mid-stream; 0 fails the request with UNAVAILABLE instead")
    parser.add_argument("--max-concurrent-requests", type=int, default=None,
                        help="router-wide concurrency cap shared fairly among tenants")
    parser.add_argument("--log-level", default=os.environ.get("TANDEM_LOG_LEVEL", "INFO"))
    add_worker_auth_arguments(parser)
    parser.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Runs the router until SIGTERM."""
    return asyncio.run(serve(args))


async def serve(args: argparse.Namespace) -> int:
    """Builds the router, serves both APIs, and drains on SIGTERM."""
    configure_logging(args.log_level)
    worker_token = worker_token_from_args(args)
    setup_tracing("tandem-router")
    try:
        sources = model_sources(args.model, args.model_name, args.tier)
        difficulty = _difficulty_parts(args, set(sources))
    except ValueError as exc:
        raise SystemExit(f"tandem router: {exc}") from None
    tokenizers = _load_tokenizers(sources)
    pool = WorkerPool(worker_token=worker_token)
    discovery = await start_discovery(args, pool)
    await pool.start()
    await pool.wait_for("decode", timeout_s=120.0)
    service, catalog = _build_service(args, pool, tokenizers, difficulty)
    authenticator = (Authenticator(keys_path=args.api_keys, allow_anonymous=args.allow_anonymous)
                     if args.api_keys else Authenticator(allow_anonymous=args.allow_anonymous))
    tls = tls_from_args(args.tls_cert, args.tls_key)
    metrics = default_metrics()
    grpc_server = build_grpc_server(service, authenticator, host=args.host, port=args.grpc_port, tls=tls)
    await grpc_server.start()
    app = build_http_app(service, authenticator, readiness=lambda: bool(pool.healthy("decode")),
                         metrics=None if args.metrics_port else metrics)
    http_server = await start_http_server(app, args.host, args.http_port, tls)
    metrics_port = start_metrics_server(args.metrics_port) if args.metrics_port else http_server.port
    write_ready_file(args.ready_file, grpc_port=grpc_server.port, http_port=http_server.port,
                     metrics_port=metrics_port)
    log.info("router ready: gRPC %d, HTTP %d, tiers %s (served now: %s)", grpc_server.port,
             http_server.port, sorted(sources), sorted(catalog))

    async def drain() -> None:
        await grpc_server.stop(grace_s=5.0)
        await http_server.close()

    await install_drain_on_sigterm(drain).wait()
    if discovery is not None:
        discovery.cancel()
    await pool.stop()
    return 0


def _build_service(args: argparse.Namespace, pool: WorkerPool, tokenizers: dict[str, object],
                   difficulty: dict) -> tuple[AdmittedService, ModelCatalog]:
    catalog = ModelCatalog(tokenizers, pool, price_per_1k_prompt_tokens=args.price_prompt,
                           price_per_1k_completion_tokens=args.price_completion)
    choice = WorkerChoiceConfig(min_disaggregate_prompt_tokens=args.min_disaggregate_tokens)
    dispatcher = Dispatcher(pool, DispatchSettings(choice=choice, max_attempts=args.max_attempts,
                                                   migration_limit=args.migration_limit,
                                                   lease_seconds=args.lease_seconds))
    brain = RoutingBrain(default_model=next(iter(tokenizers)),
                         auto_names=frozenset(args.deployment_name), **difficulty)
    core = RouterCore(catalog, dispatcher, brain)
    quotas = QuotaPolicy(QuotaConfig(max_concurrent_requests=args.max_concurrent_requests))
    return AdmittedService(core, quotas, metrics=default_metrics(), is_auto_model=brain.is_auto), catalog


def _load_tokenizers(sources: dict[str, str]) -> dict[str, object]:
    from tandem.engine.tokenizer import Tokenizer

    return {name: Tokenizer.from_model_dir(resolve_model_dir(source))
            for name, source in sources.items()}


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _difficulty_parts(args: argparse.Namespace, tiers: set[str]) -> dict:
    """The estimator and policy (both or neither); every tier the policy names must be one of ours."""
    if (args.policy is None) != (args.estimator is None):
        raise ValueError("--policy and --estimator go together: the policy maps the estimator's "
                         "difficulty to a tier and budgets")
    if args.policy is None:
        return {}
    from tandem.difficulty.base import load_estimator
    from tandem.policy.difficulty_policy import load_policy

    policy = load_policy(args.policy)
    unknown = policy.tiers - tiers
    if unknown:
        raise ValueError(f"{args.policy} routes to tiers {sorted(unknown)} that this router has no "
                         f"tokenizer for (tiers: {sorted(tiers)}; add --tier NAME=FOLDER)")
    return {"estimator": load_estimator(args.estimator), "policy": policy}
