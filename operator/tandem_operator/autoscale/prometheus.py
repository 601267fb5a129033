"""Pool load from a Prometheus server's HTTP API (instant queries over the pool's series).

The series must carry the pool's identity as labels `namespace`, `tandem_deployment`,
`tandem_role` and `tandem_model`: the chart's ServiceMonitor copies them from the pod labels
`tandem.dev/deployment`, `tandem.dev/role` and `tandem.dev/model`. The pool's latency comes from
the router's series (`tandem_role="router"`) of the models the pool's own workers report (a join
on their `model` label): TTFT for a prefill pool, inter-token latency for a decode pool (see
`tandem.policy.pool_load`).
"""

from __future__ import annotations

import asyncio
import math

import aiohttp

from tandem.policy.autoscaling import Phase
from tandem.policy.pool_load import ITL_HISTOGRAM, TTFT_HISTOGRAM, PoolLoad

from tandem_operator.autoscale.metrics import MetricsUnavailable, PoolRef


class PrometheusSource:
    """A MetricsSource that asks Prometheus; counters become rates over `rate_window`."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, rate_window: str = "1m",
                 timeout_s: float = 5.0) -> None:
        self._session = session
        self._query_url = base_url.rstrip("/") + "/api/v1/query"
        self._window = rate_window
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    def queries(self, pool: PoolRef) -> dict[str, str]:
        """The PromQL expression behind each PoolLoad field."""
        sel = (f'namespace="{pool.namespace}",tandem_deployment="{pool.deployment}",'
               f'tandem_role="{pool.phase.value}",tandem_model="{pool.tier}"')
        router = (f'namespace="{pool.namespace}",tandem_deployment="{pool.deployment}",'
                  f'tandem_role="router"')
        phase, window = pool.phase.value, self._window
        is_prefill = pool.phase is Phase.PREFILL
        latency = "ttft_p90_s" if is_prefill else "itl_p90_s"
        histogram = TTFT_HISTOGRAM if is_prefill else ITL_HISTOGRAM
        return {
            "num_queued_prompt_tokens": f'sum(tandem_queue_prompt_tokens{{{sel},phase="prefill"}})',
            "prefill_tokens_per_s": f"sum(rate(tandem_prefill_tokens_total{{{sel}}}[{window}]))",
            "num_running_seqs": f'sum(tandem_running_requests{{{sel},phase="{phase}"}})',
            "num_waiting_seqs": f'sum(tandem_queue_requests{{{sel},phase="{phase}"}})',
            "num_kv_blocks_used": f"sum(tandem_kv_blocks_used{{{sel}}})",
            "num_kv_blocks_total": f"sum(tandem_kv_blocks_total{{{sel}}})",
            # The router's series of the models the pool's workers serve: `group` is 1 per model.
            latency: (f"histogram_quantile(0.9, sum by (le) "
                      f"(rate({histogram}_bucket{{{router}}}[{window}]) * on (model) group_left () "
                      f"group by (model) (tandem_kv_blocks_total{{{sel}}})))"),
        }

    async def read_load(self, pool: PoolRef) -> PoolLoad:
        """Runs the pool's queries; a series nobody reports counts as 0 (latencies: unknown)."""
        queries = self.queries(pool)
        values = await asyncio.gather(*(self._scalar(query) for query in queries.values()))
        fields = dict(zip(queries, values))
        latencies = {key: fields.pop(key) for key in ("ttft_p90_s", "itl_p90_s") if key in fields}
        return PoolLoad(**{key: value or 0.0 for key, value in fields.items()}, **latencies)

    async def _scalar(self, query: str) -> float | None:
        try:
            async with self._session.get(self._query_url, params={"query": query},
                                         timeout=self._timeout) as response:
                body = await response.json(content_type=None)
                if response.status != 200 or body.get("status") != "success":
                    raise MetricsUnavailable(f"prometheus answered {response.status} to {query!r}: "
                                             f"{body.get('error', body)}")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise MetricsUnavailable(f"prometheus query {query!r} failed: {exc!r}") from exc
        result = body.get("data", {}).get("result") or []
        if not result:
            return None
        value = float(result[0]["value"][1])
        return value if math.isfinite(value) else None
