"""Feeds the router's worker pool from discovery: static lists or Kubernetes EndpointSlices."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from router.discovery import WorkerEndpoint
from router.worker_pool import WorkerPool

log = logging.getLogger(__name__)


def add_discovery_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that choose and configure worker discovery."""
    parser.add_argument("--discovery", choices=["static", "kubernetes"], default="static")
    parser.add_argument("--prefill-workers", default="", help="static: host:port,host:port")
    parser.add_argument("--decode-workers", default="", help="static: host:port,host:port")
    parser.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "default"),
                        help="kubernetes: namespace of the worker EndpointSlices")
    parser.add_argument("--deployment", default=os.environ.get("TANDEM_DEPLOYMENT", ""),
                        help="kubernetes: TandemDeployment name the workers carry as a label")
    parser.add_argument("--kubeconfig", default=None,
                        help="kubernetes: kubeconfig file (default: in-cluster configuration)")


async def start_discovery(args: argparse.Namespace, pool: WorkerPool) -> asyncio.Task | None:
    """Fills the pool now; for Kubernetes, returns the task that follows changes."""
    if args.discovery == "static":
        endpoints = _static(args.prefill_workers, "prefill") + _static(args.decode_workers, "decode")
        if not any(role == "decode" for _, role in endpoints):
            raise SystemExit("static discovery needs at least one --decode-workers address")
        pool.set_endpoints(endpoints)
        return None
    from router.discovery_k8s import KubernetesDiscovery, KubernetesDiscoveryConfig

    discovery = await KubernetesDiscovery.connect(
        KubernetesDiscoveryConfig(deployment=args.deployment, namespace=args.namespace),
        kubeconfig=args.kubeconfig)
    await discovery.start()
    pool.set_endpoints(_pairs(discovery.endpoints()))

    async def follow() -> None:
        try:
            async for endpoints in discovery.watch():
                pool.set_endpoints(_pairs(endpoints))
        finally:
            await discovery.close()

    return asyncio.get_running_loop().create_task(follow())


def _pairs(endpoints: frozenset[WorkerEndpoint]) -> list[tuple[str, str]]:
    return [(endpoint.address, str(endpoint.role)) for endpoint in endpoints]


def _static(addresses: str, role: str) -> list[tuple[str, str]]:
    return [(address.strip(), role) for address in addresses.split(",") if address.strip()]
