"""The per-TandemDeployment background loop: status refresh and autoscaling at the spec's interval."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from tandem_operator.context import OperatorContext
from tandem_operator.kube import KubeError
from tandem_operator.manifests.objects import Owner
from tandem_operator.observe import observe_and_scale
from tandem_operator.parsing import parse_spec

DEFAULT_INTERVAL_S = 15.0


async def watch_pools(*, stopped: kopf.DaemonStopped, body: kopf.Body, name: str,
                      namespace: str, uid: str, memo: kopf.Memo, logger: kopf.Logger,
                      **_: Any) -> None:
    """Ticks until the TandemDeployment goes away or the operator stops; kopf keeps `body` fresh."""
    context: OperatorContext = memo.context
    owner = Owner(name, namespace, uid)
    autoscaler = context.new_autoscaler()
    loop = asyncio.get_running_loop()
    # kopf may still start a daemon while it shuts down, after the clients are closed.
    while not stopped and not context.is_closed:
        interval = DEFAULT_INTERVAL_S
        # The spec and its generation from one snapshot of the body.
        generation = body.get("metadata", {}).get("generation")
        try:
            spec = parse_spec(dict(body.get("spec") or {}), name, context.options.worker_image)
        except ValueError:
            spec = None  # the reconciler reports the bad spec; nothing to observe meanwhile
        if spec is not None:
            interval = spec.autoscaling.interval_s
            try:
                observation = await observe_and_scale(
                    context.kube, owner, spec, autoscaler, loop.time(),
                    dict(body.get("status") or {}), generation)
            except KubeError as exc:
                logger.warning("pool observation failed, retrying next tick: %s", exc)
                kopf.warn(body, reason="ApiError", message=str(exc))
                observation = None
            except Exception:
                if context.is_closed:
                    return  # the clients closed under this tick: the operator is stopping
                raise
            for decision in observation.changes if observation else []:
                kopf.info(body, reason="Scaled",
                          message=f"{decision.pool.name}: {decision.num_replicas_before} -> "
                                  f"{decision.num_replicas} ({decision.reason})")
        await stopped.wait(interval)
