"""Create, update and resume: reconcile a TandemDeployment into its objects and report status."""

from __future__ import annotations

from typing import Any

import kopf

from tandem_operator.context import OperatorContext
from tandem_operator.kube import KubeError
from tandem_operator.manifests.objects import Owner
from tandem_operator.parsing import parse_spec
from tandem_operator.reconcile import converge, write_status
from tandem_operator.spec import DeploymentSpec
from tandem_operator.status import Problem, build_status, workload_state

VOLUME_WAIT_S = 30.0
API_RETRY_S = 10.0
NAME_TAKEN_WAIT_S = 60.0


async def reconcile_deployment(*, body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta,
                               status: kopf.Status, name: str, namespace: str, uid: str,
                               memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Applies the spec; bad specs fail permanently; missing volumes or Secrets, names taken by
    other controllers' objects and API errors are retried."""
    context: OperatorContext = memo.context
    owner = Owner(name, namespace, uid)
    generation = meta.get("generation")

    async def report(parsed: DeploymentSpec | None, problem: Problem) -> None:
        await write_status(context.kube, owner,
                           build_status(parsed, generation, [], status, problem))
        kopf.warn(body, reason=problem.reason, message=problem.message)

    try:
        parsed = parse_spec(dict(spec), name, context.options.worker_image)
    except ValueError as exc:
        await report(None, Problem("InvalidSpec", str(exc), is_degraded=True))
        raise kopf.PermanentError(f"invalid spec: {exc}") from exc
    try:
        outcome = await converge(context.kube, owner, parsed)
        if isinstance(outcome, Problem):
            await report(parsed, outcome)
            # A volume or Secret to wait for (not degraded) is retried sooner than a taken name.
            raise kopf.TemporaryError(outcome.message, delay=NAME_TAKEN_WAIT_S
                                      if outcome.is_degraded else VOLUME_WAIT_S)
        states = [workload_state(deployment) for deployment in outcome.deployments]
        await write_status(context.kube, owner, build_status(parsed, generation, states, status))
    except KubeError as exc:
        kopf.warn(body, reason="ApiError", message=str(exc))
        raise kopf.TemporaryError(f"Kubernetes API error: {exc}", delay=API_RETRY_S) from exc
    if outcome.is_change:
        kopf.info(body, reason="Reconciled", message=outcome.summary())
    logger.info("reconciled generation %s: %s", generation, outcome.summary())
