"""Per-tenant quotas: a token bucket per tenant, concurrent-request limits, a fairly shared global cap.

Pure policy: no I/O and no clock; the caller passes `now` (seconds, any monotonic origin).

Tokens per minute. Each tenant owns a bucket of `burst_tokens` (default: one minute's worth) that
refills at `tokens_per_minute / 60` per second. A request is charged its estimated tokens on
admission and corrected with its actual usage on release, so a bucket may go below zero (debt)
when a request used more than estimated; the tenant then waits until the debt is repaid. A request
whose estimate exceeds the whole bucket is admitted only when the bucket is full, so it is never
refused forever.

Concurrency. A tenant may hold at most `max_concurrent_requests` in flight. The optional global
cap is shared by weight among the tenants that have requests in flight (each tenant's fair share
is its weighted part of the cap minus `reserved_slots`). Free slots go to anyone while more than
`reserved_slots` are free; the last `reserved_slots` go only to tenants below their fair share.
So a tenant alone may fill all but the reserved slots, a newcomer always finds one, and when
slots are scarce they go to the tenants below their share: one tenant's burst cannot starve the
others, and an over-share tenant drains back to its share as its requests finish.

Retry hints are exact for tokens (the time until the bucket holds enough) and, for slots, the
mean request duration seen so far divided by the requests in flight (when one of them is expected
to finish).
"""

from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Protocol

_EWMA_ALPHA = 0.2
# Tolerance for float rounding in the bucket, so that waiting exactly the hint always suffices.
_TOKEN_EPSILON = 1e-6


class RefusalReason(enum.StrEnum):
    """Why a request was refused."""

    TOKEN_RATE = "token_rate"
    CONCURRENCY = "concurrency"
    GLOBAL_CAPACITY = "global_capacity"


@dataclass(slots=True, frozen=True)
class TenantQuota:
    """Limits of one tenant; None means unlimited."""

    tokens_per_minute: float | None = None
    burst_tokens: float | None = None
    max_concurrent_requests: int | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("tokens_per_minute", "burst_tokens"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value <= 0):
                raise ValueError(f"TenantQuota: {name} must be a finite number > 0, got {value}")
        if self.burst_tokens is not None and self.tokens_per_minute is None:
            raise ValueError("TenantQuota: burst_tokens needs tokens_per_minute")
        if self.max_concurrent_requests is not None and self.max_concurrent_requests < 1:
            raise ValueError(
                f"TenantQuota: max_concurrent_requests must be >= 1, got {self.max_concurrent_requests}")
        if not math.isfinite(self.weight) or self.weight <= 0:
            raise ValueError(f"TenantQuota: weight must be a finite number > 0, got {self.weight}")

    @property
    def bucket_capacity(self) -> float | None:
        """Tokens the bucket holds when full (None when the token rate is unlimited)."""
        if self.tokens_per_minute is None:
            return None
        return self.burst_tokens if self.burst_tokens is not None else self.tokens_per_minute


class QuotaSubject(Protocol):
    """Whatever is admitted: anything with a name and a quota (the router's Tenant)."""

    @property
    def name(self) -> str:
        """The tenant's unique name."""
        ...

    @property
    def quota(self) -> TenantQuota:
        """The tenant's current limits."""
        ...


@dataclass(slots=True)
class QuotaConfig:
    """Global settings: the shared concurrency cap and the retry hints."""

    max_concurrent_requests: int | None = None
    reserved_slots: int = 1
    default_retry_after_s: float = 1.0
    max_retry_after_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_concurrent_requests is not None and self.max_concurrent_requests < 1:
            raise ValueError(
                f"QuotaConfig: max_concurrent_requests must be >= 1, got {self.max_concurrent_requests}")
        if self.reserved_slots < 0:
            raise ValueError(f"QuotaConfig: reserved_slots must be >= 0, got {self.reserved_slots}")
        if (self.max_concurrent_requests is not None
                and self.reserved_slots >= self.max_concurrent_requests):
            raise ValueError("QuotaConfig: reserved_slots must be below max_concurrent_requests")
        if not 0 < self.default_retry_after_s <= self.max_retry_after_s:
            raise ValueError("QuotaConfig: need 0 < default_retry_after_s <= max_retry_after_s")


@dataclass(slots=True, frozen=True)
class Admission:
    """A request let in; hand it back to `release` exactly once."""

    admission_id: int
    tenant_name: str
    charged_tokens: int
    admitted_at: float


@dataclass(slots=True, frozen=True)
class Refusal:
    """A request turned away, with the reason and when trying again makes sense."""

    reason: RefusalReason
    message: str
    retry_after_s: float


@dataclass(slots=True)
class _DurationStats:
    mean_s: float | None = None

    def observe(self, duration_s: float) -> None:
        """Adds one request duration to the moving mean."""
        self.mean_s = duration_s if self.mean_s is None else (
            (1 - _EWMA_ALPHA) * self.mean_s + _EWMA_ALPHA * duration_s)


@dataclass(slots=True)
class _TenantState:
    quota: TenantQuota
    tokens: float
    updated_at: float
    num_in_flight: int = 0
    durations: _DurationStats = field(default_factory=_DurationStats)

    def refill(self, now: float) -> None:
        """Adds the tokens earned since the last update, up to the bucket's capacity."""
        capacity = self.quota.bucket_capacity
        if capacity is None:
            return
        elapsed = max(0.0, now - self.updated_at)
        self.tokens = min(capacity, self.tokens + elapsed * self.quota.tokens_per_minute / 60.0)
        self.updated_at = max(self.updated_at, now)


class QuotaPolicy:
    """Admits and releases requests against tenant and global limits."""

    def __init__(self, config: QuotaConfig | None = None) -> None:
        self.config = config or QuotaConfig()
        self._tenants: dict[str, _TenantState] = {}
        self._open: dict[int, Admission] = {}
        self._ids = itertools.count(1)
        self._global_durations = _DurationStats()

    def admit(self, tenant: QuotaSubject, estimated_tokens: int, now: float) -> Admission | Refusal:
        """Lets a request in (charging its estimate) or refuses it with a retry hint; no change on refusal."""
        if estimated_tokens < 0:
            raise ValueError(f"admit: estimated_tokens must be >= 0, got {estimated_tokens}")
        state = self._state(tenant, now)
        state.refill(now)
        refusal = (self._check_tenant_slots(tenant.name, state)
                   or self._check_global_slots(tenant.name, state)
                   or self._check_tokens(tenant.name, state, estimated_tokens))
        if refusal is not None:
            return refusal
        if state.quota.bucket_capacity is not None:
            state.tokens -= estimated_tokens
        state.num_in_flight += 1
        admission = Admission(next(self._ids), tenant.name, estimated_tokens, now)
        self._open[admission.admission_id] = admission
        return admission

    def recharge(self, admission: Admission, estimated_tokens: int, now: float) -> Admission | Refusal:
        """Replaces an open admission's charge with a better estimate (the planned request's).

        A larger estimate is refused, changing nothing, when the bucket could not have admitted it
        in the first place; a smaller one gives the difference back. Either way the admission
        stays open: release the one this returns (or, on refusal, the one passed in).
        """
        if estimated_tokens < 0:
            raise ValueError(f"recharge: estimated_tokens must be >= 0, got {estimated_tokens}")
        if admission.admission_id not in self._open:
            raise ValueError(f"recharge: admission {admission.admission_id} is not open")
        state = self._tenants[admission.tenant_name]
        state.refill(now)
        if state.quota.bucket_capacity is not None:
            state.tokens += admission.charged_tokens  # as if it had not been charged yet
            refusal = (self._check_tokens(admission.tenant_name, state, estimated_tokens)
                       if estimated_tokens > admission.charged_tokens else None)
            state.tokens -= admission.charged_tokens if refusal is not None else estimated_tokens
            if refusal is not None:
                return refusal
        recharged = replace(admission, charged_tokens=estimated_tokens)
        self._open[admission.admission_id] = recharged
        return recharged

    def release(self, admission: Admission, actual_tokens: int, now: float) -> None:
        """Ends an admitted request and corrects its tenant's bucket with the tokens it really used."""
        if actual_tokens < 0:
            raise ValueError(f"release: actual_tokens must be >= 0, got {actual_tokens}")
        if self._open.pop(admission.admission_id, None) is None:
            raise ValueError(f"release: admission {admission.admission_id} is not open")
        state = self._tenants[admission.tenant_name]
        state.refill(now)
        state.num_in_flight -= 1
        capacity = state.quota.bucket_capacity
        if capacity is not None:
            state.tokens = min(capacity, state.tokens + admission.charged_tokens - actual_tokens)
        duration_s = max(0.0, now - admission.admitted_at)
        state.durations.observe(duration_s)
        self._global_durations.observe(duration_s)

    def num_in_flight(self, tenant_name: str | None = None) -> int:
        """Requests in flight for one tenant, or for all tenants when tenant_name is None."""
        if tenant_name is None:
            return len(self._open)
        state = self._tenants.get(tenant_name)
        return 0 if state is None else state.num_in_flight

    def available_tokens(self, tenant_name: str, now: float) -> float | None:
        """Tokens in the tenant's bucket at `now` (None when unlimited or unknown)."""
        state = self._tenants.get(tenant_name)
        if state is None or state.quota.bucket_capacity is None:
            return None
        state.refill(now)
        return state.tokens

    def fair_share(self, tenant_name: str) -> float | None:
        """The tenant's weighted share of the shared slots among active tenants (None without a cap)."""
        cap = self.config.max_concurrent_requests
        state = self._tenants.get(tenant_name)
        if cap is None or state is None:
            return None
        total_weight = sum(other.quota.weight for name, other in self._tenants.items()
                           if other.num_in_flight > 0 or name == tenant_name)
        return (cap - self.config.reserved_slots) * state.quota.weight / total_weight

    def _state(self, tenant: QuotaSubject, now: float) -> _TenantState:
        state = self._tenants.get(tenant.name)
        if state is None:
            capacity = tenant.quota.bucket_capacity
            state = _TenantState(tenant.quota, capacity or 0.0, now)
            self._tenants[tenant.name] = state
        elif state.quota != tenant.quota:
            # The quota changed (config reload): keep the level, bounded by the new capacity.
            state.refill(now)
            capacity = tenant.quota.bucket_capacity
            state.tokens = 0.0 if capacity is None else (
                min(state.tokens, capacity) if state.quota.bucket_capacity is not None else capacity)
            state.quota = tenant.quota
        return state

    def _check_tenant_slots(self, name: str, state: _TenantState) -> Refusal | None:
        limit = state.quota.max_concurrent_requests
        if limit is None or state.num_in_flight < limit:
            return None
        return Refusal(RefusalReason.CONCURRENCY,
                       f"tenant {name!r} has {state.num_in_flight} requests in flight (limit {limit})",
                       self._slot_retry_after(state.durations.mean_s, state.num_in_flight))

    def _check_global_slots(self, name: str, state: _TenantState) -> Refusal | None:
        cap = self.config.max_concurrent_requests
        if cap is None:
            return None
        num_in_flight = len(self._open)
        num_free = cap - num_in_flight
        share = self.fair_share(name)
        is_over_share = share is not None and state.num_in_flight >= share
        if num_free > self.config.reserved_slots or (num_free > 0 and not is_over_share):
            return None
        detail = ("the router is at its capacity" if num_free <= 0 else
                  f"tenant {name!r} holds its fair share ({state.num_in_flight} of {share:.1f} slots)"
                  " and the last free slots are kept for other tenants")
        return Refusal(RefusalReason.GLOBAL_CAPACITY,
                       f"{detail} ({num_in_flight} of {cap} requests in flight)",
                       self._slot_retry_after(self._global_durations.mean_s, num_in_flight))

    def _check_tokens(self, name: str, state: _TenantState, estimated_tokens: int) -> Refusal | None:
        capacity = state.quota.bucket_capacity
        if capacity is None:
            return None
        needed = min(float(estimated_tokens), capacity)
        if state.tokens >= needed - _TOKEN_EPSILON:
            return None
        rate_per_s = state.quota.tokens_per_minute / 60.0
        retry_after_s = min(self.config.max_retry_after_s, (needed - state.tokens) / rate_per_s)
        return Refusal(RefusalReason.TOKEN_RATE,
                       f"tenant {name!r} is over its token rate ({state.quota.tokens_per_minute:g} "
                       f"tokens/min): needs {needed:.0f} tokens, has {max(state.tokens, 0.0):.0f}",
                       retry_after_s)

    def _slot_retry_after(self, mean_duration_s: float | None, num_in_flight: int) -> float:
        if mean_duration_s is None or num_in_flight <= 0:
            return self.config.default_retry_after_s
        # With k requests in flight, one is expected to finish after about a k-th of a duration.
        hint = mean_duration_s / num_in_flight
        return min(self.config.max_retry_after_s, max(0.01, hint))
