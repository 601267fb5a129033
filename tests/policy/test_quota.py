"""Tenant quotas: token buckets, concurrency limits, fair global slots, retry hints.

The load tests run many asyncio client tasks against one QuotaPolicy on a virtual clock: each
client admits, holds its request for a while, releases with its actual usage, and on refusal
sleeps exactly the retry hint. Time is virtual, so the tests are exact and take milliseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field

import pytest

from tandem.policy.quota import Admission, QuotaConfig, QuotaPolicy, RefusalReason, Refusal, TenantQuota


@dataclass(frozen=True)
class Subject:
    name: str
    quota: TenantQuota


class VirtualClock:
    """Asyncio tasks sleep on virtual time; run() advances it event by event."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []
        self._order = itertools.count()

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), future))
        await future

    async def run(self, tasks: list[asyncio.Task], until: float) -> None:
        await self._settle(tasks)
        while self._sleepers and self._sleepers[0][0] <= until:
            wake_at, _, future = heapq.heappop(self._sleepers)
            self.now = wake_at
            future.set_result(None)
            await self._settle(tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _settle(self, tasks: list[asyncio.Task]) -> None:
        # Let every woken task run until it sleeps on the clock again (or ends).
        while len(self._sleepers) + sum(task.done() for task in tasks) < len(tasks):
            await asyncio.sleep(0)


@dataclass
class Ledger:
    """What one tenant got during a load test."""

    num_admitted: int = 0
    num_refused: int = 0
    tokens_used: int = 0
    max_in_flight: int = 0
    waits: list[float] = field(default_factory=list)


async def client(policy, clock, subject, ledger, *, estimate, actual, hold_s, start_s=0.0,
                 global_cap=None, global_in_flight=None):
    await clock.sleep(start_s)
    while True:
        first_try = clock.now
        decision = policy.admit(subject, estimate, clock.now)
        while isinstance(decision, Refusal):
            ledger.num_refused += 1
            assert decision.retry_after_s > 0
            await clock.sleep(decision.retry_after_s)
            decision = policy.admit(subject, estimate, clock.now)
        ledger.waits.append(clock.now - first_try)
        ledger.num_admitted += 1
        ledger.max_in_flight = max(ledger.max_in_flight, policy.num_in_flight(subject.name))
        if global_cap is not None:
            global_in_flight.append(policy.num_in_flight())
        await clock.sleep(hold_s)
        policy.release(decision, actual, clock.now)
        ledger.tokens_used += actual


async def test_token_rates_hold_per_tenant_under_concurrent_load_and_hints_keep_them_busy():
    policy, clock = QuotaPolicy(), VirtualClock()
    tenants = {"a": Subject("a", TenantQuota(tokens_per_minute=600, burst_tokens=100)),
               "b": Subject("b", TenantQuota(tokens_per_minute=1800, burst_tokens=300))}
    ledgers = {name: Ledger() for name in tenants}
    # Each request is estimated at 20 tokens but uses 25: the correction charges the difference.
    tasks = [asyncio.create_task(client(policy, clock, tenants[name], ledgers[name], estimate=20,
                                        actual=25, hold_s=0.5))
             for name in tenants for _ in range(5)]
    duration_s = 120.0
    await clock.run(tasks, until=duration_s)
    for name, subject in tenants.items():
        quota, ledger = subject.quota, ledgers[name]
        allowed = quota.burst_tokens + quota.tokens_per_minute * duration_s / 60
        # Never above the rate (plus the uncorrected overshoot of the 5 requests in flight at the end).
        assert ledger.tokens_used <= allowed + 5 * 5
        # Clients that sleep exactly the hint leave little of the allowance unused.
        assert ledger.tokens_used >= 0.9 * allowed
        assert ledger.num_refused > 0


async def test_concurrency_limit_holds_under_load():
    policy, clock = QuotaPolicy(), VirtualClock()
    subject = Subject("a", TenantQuota(max_concurrent_requests=3))
    ledger = Ledger()
    tasks = [asyncio.create_task(client(policy, clock, subject, ledger, estimate=1, actual=1, hold_s=2.0))
             for _ in range(10)]
    await clock.run(tasks, until=60.0)
    assert ledger.max_in_flight == 3
    # With 3 slots and 2 s requests, about 90 requests fit into a minute.
    assert ledger.num_admitted >= 80


async def burst_against_light(reserved_slots: int) -> tuple[Ledger, Ledger, list[int]]:
    policy = QuotaPolicy(QuotaConfig(max_concurrent_requests=10, reserved_slots=reserved_slots))
    clock, global_in_flight = VirtualClock(), []
    bursty, light = Subject("bursty", TenantQuota()), Subject("light", TenantQuota())
    bursty_ledger, light_ledger = Ledger(), Ledger()
    tasks = [asyncio.create_task(client(policy, clock, bursty, bursty_ledger, estimate=1, actual=1,
                                        hold_s=5.0, global_cap=10, global_in_flight=global_in_flight))
             for _ in range(30)]
    tasks += [asyncio.create_task(client(policy, clock, light, light_ledger, estimate=1, actual=1,
                                         hold_s=1.0, start_s=10.0, global_cap=10,
                                         global_in_flight=global_in_flight))
              for _ in range(2)]
    await clock.run(tasks, until=70.0)
    return bursty_ledger, light_ledger, global_in_flight


async def test_one_tenants_burst_does_not_starve_another():
    bursty, light, global_in_flight = await burst_against_light(reserved_slots=1)
    unfair_bursty, unfair_light, _ = await burst_against_light(reserved_slots=0)
    assert max(global_in_flight) <= 10
    # Two light clients with 1 s requests over 60 s: close to 120 requests when they are never starved.
    assert light.num_admitted >= 100
    assert max(light.waits) <= 5.0
    # Plain first-come-first-served on the same load serves the light tenant much worse.
    assert unfair_light.num_admitted < 0.8 * light.num_admitted
    assert bursty.num_admitted > 0


def test_retry_hint_for_tokens_is_exact():
    policy = QuotaPolicy()
    subject = Subject("a", TenantQuota(tokens_per_minute=60, burst_tokens=10))
    assert isinstance(policy.admit(subject, 10, now=0.0), Admission)
    refusal = policy.admit(subject, 4, now=0.0)
    assert refusal.reason is RefusalReason.TOKEN_RATE and refusal.retry_after_s == pytest.approx(4.0)
    assert isinstance(policy.admit(subject, 4, now=3.9), Refusal)
    assert isinstance(policy.admit(subject, 4, now=4.0), Admission)


def test_release_refunds_unused_tokens_and_charges_overuse():
    policy = QuotaPolicy()
    subject = Subject("a", TenantQuota(tokens_per_minute=60, burst_tokens=100))
    admission = policy.admit(subject, 80, now=0.0)
    policy.release(admission, 30, now=0.0)
    assert policy.available_tokens("a", now=0.0) == pytest.approx(70)
    admission = policy.admit(subject, 10, now=0.0)
    policy.release(admission, 90, now=0.0)
    assert policy.available_tokens("a", now=0.0) == pytest.approx(-20)
    assert policy.admit(subject, 5, now=0.0).retry_after_s == pytest.approx(25.0)
    with pytest.raises(ValueError, match="not open"):
        policy.release(admission, 1, now=1.0)


def test_a_planned_request_is_recharged_with_its_real_estimate():
    policy = QuotaPolicy()
    subject = Subject("a", TenantQuota(tokens_per_minute=60, burst_tokens=100))
    first = policy.admit(subject, 20, now=0.0)
    # Planned: more than the first guess, and the bucket holds it.
    planned = policy.recharge(first, 50, now=0.0)
    assert planned.charged_tokens == 50 and policy.available_tokens("a", now=0.0) == pytest.approx(50)
    # Planned smaller: the difference goes back at once.
    planned = policy.recharge(planned, 30, now=0.0)
    assert policy.available_tokens("a", now=0.0) == pytest.approx(70)
    policy.release(planned, 30, now=0.0)
    assert policy.available_tokens("a", now=0.0) == pytest.approx(70)


def test_a_recharge_the_bucket_cannot_cover_is_refused_and_changes_nothing():
    policy = QuotaPolicy()
    subject = Subject("a", TenantQuota(tokens_per_minute=60, burst_tokens=100))
    policy.release(policy.admit(subject, 60, now=0.0), 60, now=0.0)  # 40 left
    admission = policy.admit(subject, 10, now=0.0)
    refusal = policy.recharge(admission, 70, now=0.0)
    assert isinstance(refusal, Refusal) and refusal.reason is RefusalReason.TOKEN_RATE
    assert refusal.retry_after_s == pytest.approx(30.0)  # 40 tokens held, 70 needed, 1 per second
    assert policy.available_tokens("a", now=0.0) == pytest.approx(30)
    policy.release(admission, 0, now=0.0)
    assert policy.available_tokens("a", now=0.0) == pytest.approx(40)


def test_request_larger_than_the_bucket_waits_for_a_full_bucket():
    policy = QuotaPolicy()
    subject = Subject("a", TenantQuota(tokens_per_minute=60, burst_tokens=10))
    policy.release(policy.admit(subject, 5, now=0.0), 5, now=0.0)
    refusal = policy.admit(subject, 1000, now=0.0)
    assert refusal.retry_after_s == pytest.approx(5.0)
    assert isinstance(policy.admit(subject, 1000, now=5.0), Admission)


def test_slot_retry_hint_follows_request_durations():
    policy = QuotaPolicy()
    subject = Subject("a", TenantQuota(max_concurrent_requests=2))
    first = policy.admit(subject, 0, now=0.0)
    assert policy.admit(subject, 0, now=0.0).__class__ is Admission
    assert policy.admit(subject, 0, now=0.0).retry_after_s == 1.0  # no history: the default
    policy.release(first, 0, now=8.0)
    policy.admit(subject, 0, now=8.0)
    refusal = policy.admit(subject, 0, now=8.0)
    assert refusal.reason is RefusalReason.CONCURRENCY
    assert refusal.retry_after_s == pytest.approx(4.0)  # 8 s requests, 2 in flight


def test_refusal_changes_nothing_and_quota_changes_apply():
    policy = QuotaPolicy()
    subject = Subject("a", TenantQuota(tokens_per_minute=60, burst_tokens=10))
    policy.admit(subject, 8, now=0.0)
    assert isinstance(policy.admit(subject, 5, now=0.0), Refusal)
    assert policy.available_tokens("a", now=0.0) == pytest.approx(2)
    assert policy.num_in_flight("a") == 1
    bigger = Subject("a", TenantQuota(tokens_per_minute=600, burst_tokens=1000))
    assert isinstance(policy.admit(bigger, 5, now=1.0), Refusal)  # the level carries over ...
    assert isinstance(policy.admit(bigger, 5, now=1.5), Admission)  # ... and refills at the new rate


@pytest.mark.parametrize("kwargs", [{"tokens_per_minute": 0}, {"burst_tokens": 5},
                                    {"max_concurrent_requests": 0}, {"weight": -1}])
def test_bad_quotas_are_rejected(kwargs):
    with pytest.raises(ValueError):
        TenantQuota(**kwargs)


def test_bad_global_config_and_estimates_are_rejected():
    with pytest.raises(ValueError, match="reserved_slots"):
        QuotaConfig(max_concurrent_requests=2, reserved_slots=2)
    with pytest.raises(ValueError, match="estimated_tokens"):
        QuotaPolicy().admit(Subject("a", TenantQuota()), -1, now=0.0)
