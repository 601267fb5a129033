"""A tenant's limits on each request: a request may tighten them, never widen them.

A value the request asks for above the tenant's limit is refused (INVALID_ARGUMENT naming the
limit); where the request says nothing, the deployment's defaults are clamped to the limits, and
the tenant's deadline and cost ceiling apply.
"""

from __future__ import annotations

from dataclasses import replace

from router.auth import TenantPolicy
from router.errors import ErrorCode, RouterError
from router.request_plan import BudgetDefaults
from tandem.api.v1 import inference_pb2


def within_tenant_limits(request: inference_pb2.GenerateRequest, defaults: BudgetDefaults,
                         policy: TenantPolicy, tenant_name: str
                         ) -> tuple[inference_pb2.GenerateRequest, BudgetDefaults]:
    """The request and defaults with the tenant's limits applied; raises RouterError if exceeded."""
    budget, sampling = request.budget, request.sampling
    _check(budget.max_tokens if budget.HasField("max_tokens") else None, policy.max_tokens,
           "max_tokens", tenant_name)
    _check(budget.max_thinking_tokens if budget.HasField("max_thinking_tokens") else None,
           policy.max_thinking_tokens, "max_thinking_tokens", tenant_name)
    _check(budget.deadline_seconds if budget.HasField("deadline_seconds") else None,
           policy.max_deadline_seconds, "deadline_seconds", tenant_name)
    _check(budget.max_cost if budget.HasField("max_cost") else None, policy.max_cost,
           "max_cost", tenant_name)
    _check(sampling.n if sampling.HasField("n") else None, policy.max_samples, "n", tenant_name)
    limited = inference_pb2.GenerateRequest()
    limited.CopyFrom(request)
    if policy.max_deadline_seconds is not None and not budget.HasField("deadline_seconds"):
        limited.budget.deadline_seconds = policy.max_deadline_seconds
    if policy.max_cost is not None and not budget.HasField("max_cost"):
        limited.budget.max_cost = policy.max_cost
    clamped = replace(
        defaults,
        max_tokens=_clamp(defaults.max_tokens, policy.max_tokens),
        max_thinking_tokens=_thinking_limit(defaults.max_thinking_tokens, policy.max_thinking_tokens),
        num_samples=_clamp(defaults.num_samples, policy.max_samples))
    return limited, clamped


def _check(asked, limit, field: str, tenant_name: str) -> None:
    if asked is not None and limit is not None and asked > limit:
        raise RouterError(ErrorCode.INVALID_ARGUMENT,
                          f"{field} {asked:g} exceeds tenant {tenant_name!r}'s limit of {limit:g}",
                          param=field)


def _clamp(value: int, limit: int | None) -> int:
    return value if limit is None else min(value, max(1, limit))


def _thinking_limit(default: int | None, limit: int | None) -> int | None:
    # None is no limit; 0 is a limit of its own (no thinking), so there is no floor of 1 here.
    if default is None or limit is None:
        return limit if default is None else default
    return min(default, limit)
