"""`tandem operator`: runs the kopf operator for TandemDeployments."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading

import kopf

from tandem_operator.context import OperatorOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the operator's flags."""
    parser.add_argument("--namespace", "-n", action="append", dest="namespaces", default=[],
                        help="namespace to watch (repeat for several)")
    parser.add_argument("--all-namespaces", "-A", action="store_true",
                        help="watch TandemDeployments in every namespace")
    parser.add_argument("--peering", default=None,
                        help="ClusterKopfPeering name shared by the operator's replicas; "
                             "omit to run standalone (one replica only)")
    parser.add_argument("--priority", type=int, default=0,
                        help="peering priority: the highest-priority replica is the active one")
    parser.add_argument("--worker-image", default=os.environ.get("TANDEM_IMAGE"),
                        help="image for TandemDeployments without spec.image (env TANDEM_IMAGE)")
    parser.add_argument("--liveness-port", type=int, default=8080,
                        help="port of the /healthz endpoint; 0 turns it off")
    parser.add_argument("--metrics-timeout", type=float, default=3.0,
                        help="seconds to wait for a pod's /metrics or a Prometheus query")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def options_from_args(args: argparse.Namespace) -> OperatorOptions:
    """The operator's options; raises ValueError on a bad combination of flags."""
    return OperatorOptions(
        namespaces=list(args.namespaces), is_clusterwide=args.all_namespaces,
        peering_name=args.peering, priority=args.priority, worker_image=args.worker_image,
        liveness_port=args.liveness_port or None, metrics_timeout_s=args.metrics_timeout)


def run(args: argparse.Namespace) -> int:
    """Runs the operator until SIGTERM or SIGINT."""
    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"tandem operator: {exc}", file=sys.stderr)
        return 2
    import tandem_operator.main  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.verbose)
    asyncio.run(operate(options))
    return 0


async def operate(options: OperatorOptions,
                  stop_flag: asyncio.Event | threading.Event | None = None,
                  ready_flag: asyncio.Event | threading.Event | None = None) -> None:
    """Runs kopf with the registered handlers and these options (tests call this in-process)."""
    liveness = (f"http://0.0.0.0:{options.liveness_port}/healthz"
                if options.liveness_port else None)
    await kopf.operator(
        clusterwide=options.is_clusterwide, namespaces=options.namespaces,
        standalone=options.peering_name is None, peering_name=options.peering_name,
        priority=options.priority, liveness_endpoint=liveness,
        memo=kopf.Memo(options=options), stop_flag=stop_flag, ready_flag=ready_flag)
