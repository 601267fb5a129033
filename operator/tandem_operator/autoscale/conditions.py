"""The ReplicasStalled condition: autoscaled pools whose replicas stay unready past the policy's
pending timeout (a pod that never schedules). The autoscaler no longer waits for them; this
condition is where a user sees why the pool runs short."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from tandem_operator.autoscale.controller import PoolDecision

REPLICAS_STALLED = "ReplicasStalled"


def replicas_stalled_condition(decisions: Iterable[PoolDecision],
                               previous: Iterable[Mapping[str, Any]] | None,
                               generation: int | None) -> dict[str, Any]:
    """The condition for this tick's decisions (its transition time kept while the status holds)."""
    stalled = [d for d in decisions if d.num_stalled_replicas]
    message = "; ".join(
        f"{d.pool.name}: {d.num_stalled_replicas} of {d.num_replicas_before} replicas not ready "
        f"past the pending timeout, the autoscaler no longer waits for them" for d in stalled)
    status = "True" if stalled else "False"
    old = next((c for c in previous or [] if c.get("type") == REPLICAS_STALLED), {})
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": REPLICAS_STALLED, "status": status,
            "reason": "ReplicasNotReady" if stalled else "ReplicasReady", "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": old.get("lastTransitionTime", now)
            if old.get("status") == status else now}
