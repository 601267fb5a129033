"""The autoscaler's switch, tick, SLOs, behaviour, pending timeout and metrics source."""

from __future__ import annotations

import enum

from pydantic import Field

from tandem_operator.spec.rules import Choice, Rule, SpecModel, described

RATE_WINDOW = "^[1-9][0-9]*[smh]$"


class MetricsSourceKind(str, enum.Enum):
    """How the autoscaler reads pool metrics."""

    SCRAPE = "scrape"
    PROMETHEUS = "prometheus"


class MetricsSpec(SpecModel):
    """Where pool metrics come from."""

    source: Choice[MetricsSourceKind] = described(
        "scrape: the pods' /metrics; prometheus: the HTTP API.", default=MetricsSourceKind.SCRAPE)
    prometheus_url: str | None = described("Prometheus base URL.", default=None,
                                           pattern="^https?://")
    rate_window: str = described("PromQL rate window, e.g. 30s, 1m or 1h.", default="1m",
                                 pattern=RATE_WINDOW)

    RULES = (Rule("!has(self.source) || self.source != 'prometheus' || has(self.prometheusUrl)",
                  "is required with source: prometheus",
                  lambda metrics: (metrics.source is not MetricsSourceKind.PROMETHEUS
                                   or metrics.prometheus_url is not None),
                  field="prometheusUrl"),)


class AutoscalingSpec(SpecModel):
    """Phase-load autoscaling of the pools (unset values: the shared policy's defaults)."""

    is_enabled: bool = Field(default=False, alias="enabled", description=(
        "Let the operator scale the pools whose scaling is not set otherwise."))
    interval_s: float = Field(default=15.0, ge=1, alias="intervalSeconds",
                              description="Tick interval.")
    cooldown_s: float | None = Field(default=None, gt=0, alias="cooldownSeconds", description=(
        "At most one change per pool per this (default: the interval)."))
    ttft_slo_s: float | None = Field(default=None, gt=0, alias="ttftSloSeconds",
                                     description="Time-to-first-token SLO (prefill).")
    itl_slo_s: float | None = Field(default=None, gt=0, alias="itlSloSeconds",
                                    description="Inter-token latency SLO (decode).")
    scale_up_stabilization_s: float | None = Field(
        default=None, ge=0, alias="scaleUpStabilizationSeconds", description="Scale-up window.")
    scale_down_stabilization_s: float | None = Field(
        default=None, ge=0, alias="scaleDownStabilizationSeconds",
        description="Scale-down window.")
    max_scale_up_step: int | None = described("Replicas added per change at most.",
                                              default=None, ge=1)
    max_scale_down_step: int | None = described("Replicas removed per change at most.",
                                                default=None, ge=1)
    pending_timeout_s: float | None = Field(
        default=None, gt=0, alias="pendingTimeoutSeconds", description=(
            "Stop waiting for replicas that stay unready this long (report them in status)."))
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)

    @property
    def metrics_source(self) -> MetricsSourceKind:
        """`metrics.source`."""
        return self.metrics.source

    @property
    def prometheus_url(self) -> str | None:
        """`metrics.prometheusUrl`."""
        return self.metrics.prometheus_url

    @property
    def rate_window(self) -> str:
        """`metrics.rateWindow`."""
        return self.metrics.rate_window
