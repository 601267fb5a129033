"""Operator start-up and clean-up: kopf settings, the API client and the metrics HTTP session."""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import kopf

from tandem_operator.context import OperatorContext, OperatorOptions, configure_settings
from tandem_operator.kube import KubeClient


async def start_operator(*, settings: kopf.OperatorSettings, memo: kopf.Memo,
                         logger: kopf.Logger, **_: Any) -> None:
    """Applies the options to kopf's settings and opens the clients every handler uses."""
    options: OperatorOptions = memo.options
    configure_settings(settings, options)
    kube = await KubeClient.connect()
    memo.context = OperatorContext(options, kube, aiohttp.ClientSession())
    logger.info("tandem operator started: namespaces=%s peering=%s",
                "all" if options.is_clusterwide else ",".join(options.namespaces),
                options.peering_name or "standalone")


async def stop_operator(*, memo: kopf.Memo, **_: Any) -> None:
    """Closes the clients."""
    context: OperatorContext | None = getattr(memo, "context", None)
    if context is not None:
        await context.close()


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own credentials: the pod's service account in a cluster, else the kubeconfig
    (the same sources `KubeClient.connect` uses)."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return kopf.login_with_service_account(**kwargs)
    return kopf.login_with_kubeconfig(**kwargs)
