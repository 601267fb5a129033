"""kopf registrations only: every handler delegates to a plain function in `handlers/`."""

from __future__ import annotations

from typing import Any

import kopf

from tandem_operator.handlers import lifecycle, pools, reconcile
from tandem_operator.kube import GROUP, VERSION

PLURAL = "tandemdeployments"


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Authenticates kopf's own API calls."""
    return lifecycle.login(**kwargs)


@kopf.on.startup()
async def startup(**kwargs: Any) -> None:
    """Configures kopf and opens the clients."""
    await lifecycle.start_operator(**kwargs)


@kopf.on.cleanup()
async def cleanup(**kwargs: Any) -> None:
    """Closes the clients."""
    await lifecycle.stop_operator(**kwargs)


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=15)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=15)
@kopf.on.update(GROUP, VERSION, PLURAL, backoff=15)
async def reconcile_deployment(**kwargs: Any) -> None:
    """Makes the owned objects match the spec."""
    await reconcile.reconcile_deployment(**kwargs)


# The daemon exits on its own once told to stop (it waits on `stopped`): give it that chance
# before kopf cancels it. A cancel that lands as its tick's wait times out leaves kopf's waiting
# task failed with TimeoutError, which kopf then raises from the operator on exit.
@kopf.daemon(GROUP, VERSION, PLURAL, backoff=15, cancellation_backoff=5, cancellation_timeout=10)
async def watch_pools(**kwargs: Any) -> None:
    """Refreshes status and autoscales the pools at the spec's interval."""
    await pools.watch_pools(**kwargs)
