"""Plays the schedule's worker faults on a running cluster and records when each really held."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp

from tests.faults.clients import now
from tests.faults.cluster import FaultCluster
from tests.faults.probes import CANARY_METRIC, has_metric, metric_total, scrape
from tests.faults.fault_plan import KILL, FaultSpec

log = logging.getLogger(__name__)

# After a worker is back (restarted and ready, or continued) the router needs a load poll or two
# to route to it again.
REJOIN_SLACK_S = 1.0


@dataclass(slots=True)
class FaultWindow:
    """When a fault made its worker unavailable: from the kill or stop to ready or continued."""

    kind: str
    target: str
    started_at: float
    ended_at: float | None = None
    error: str = ""

    @property
    def role(self) -> str:
        """The target worker's role."""
        return self.target.split("-")[0]

    def overlaps(self, start: float, end: float) -> bool:
        """Whether the window (with the rejoin slack) meets the interval [start, end]."""
        window_end = (self.ended_at if self.ended_at is not None else float("inf")) + REJOIN_SLACK_S
        return self.started_at <= end and start <= window_end


@dataclass(slots=True)
class CanaryTally:
    """Canary violations counted by the workers, including those of workers later killed."""

    before_kills: float = 0.0
    is_lost: bool = False  # a worker's count could not be read (or it exposes no canary counter)


async def play_fault(cluster: FaultCluster, fault: FaultSpec, t0: float, windows: list[FaultWindow],
                     canary: CanaryTally, session: aiohttp.ClientSession) -> None:
    """Waits for the fault's time, injects it, and undoes it after its duration."""
    await asyncio.sleep(max(0.0, t0 + fault.start_s - now()))
    name = fault.target
    if fault.kind == KILL:
        await _count_before_kill(cluster, name, canary, session)
        window = FaultWindow(fault.kind, name, now())
        windows.append(window)
        cluster.kill(name)
        log.info("fault: killed %s", name)
        await asyncio.sleep(fault.duration_s)
        try:
            await asyncio.to_thread(cluster.restart, name)
        except (RuntimeError, TimeoutError) as exc:
            window.error = f"restart failed: {exc}"
        window.ended_at = now()
        log.info("fault: %s restarted", name)
    else:
        window = FaultWindow(fault.kind, name, now())
        windows.append(window)
        cluster.stall(name)
        log.info("fault: stopped %s", name)
        await asyncio.sleep(fault.duration_s)
        cluster.resume(name)
        window.ended_at = now()
        log.info("fault: continued %s", name)


async def _count_before_kill(cluster: FaultCluster, name: str, canary: CanaryTally,
                             session: aiohttp.ClientSession) -> None:
    try:
        samples = await scrape(session, cluster.metrics_url(name))
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("cannot read %s's canary count before killing it: %s", name, exc)
        canary.is_lost = True
        return
    canary.before_kills += metric_total(samples, CANARY_METRIC)
    canary.is_lost |= not has_metric(samples, CANARY_METRIC)
