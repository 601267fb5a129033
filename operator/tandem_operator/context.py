"""What the operator shares between handlers: its options, the API client and the metrics HTTP session."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import aiohttp
import kopf

from tandem_operator.autoscale.connector import DeploymentScaler
from tandem_operator.autoscale.controller import DeploymentAutoscaler
from tandem_operator.autoscale.metrics import MetricsSource
from tandem_operator.autoscale.prometheus import PrometheusSource
from tandem_operator.autoscale.scrape import ScrapeSource
from tandem_operator.kube import KubeClient
from tandem_operator.spec import AutoscalingSpec, MetricsSourceKind

PREFIX = "tandem.dev"


@dataclass(slots=True)
class OperatorOptions:
    """How the operator runs (from `tandem operator` flags)."""

    namespaces: list[str] = field(default_factory=list)
    is_clusterwide: bool = False
    peering_name: str | None = None
    priority: int = 0
    worker_image: str | None = None
    liveness_port: int | None = None
    metrics_timeout_s: float = 3.0

    def __post_init__(self) -> None:
        if self.is_clusterwide == bool(self.namespaces):
            raise ValueError("watch either all namespaces or a list of namespaces, not both "
                             "or neither")
        if self.metrics_timeout_s <= 0:
            raise ValueError(f"metrics timeout must be > 0, got {self.metrics_timeout_s}")


@dataclass(slots=True)
class OperatorContext:
    """Live resources of a running operator, kept in kopf's memo."""

    options: OperatorOptions
    kube: KubeClient
    http: aiohttp.ClientSession
    is_closed: bool = False

    def metrics_source(self, autoscaling: AutoscalingSpec) -> MetricsSource:
        """The source a TandemDeployment's autoscaling spec asks for."""
        if autoscaling.metrics_source is MetricsSourceKind.PROMETHEUS:
            assert autoscaling.prometheus_url  # AutoscalingSpec checks this
            return PrometheusSource(self.http, autoscaling.prometheus_url, autoscaling.rate_window,
                                    self.options.metrics_timeout_s)
        return ScrapeSource(self.kube, self.http, self.options.metrics_timeout_s)

    def new_autoscaler(self) -> DeploymentAutoscaler:
        """A fresh autoscaler for one TandemDeployment."""
        return DeploymentAutoscaler(self.metrics_source, DeploymentScaler(self.kube))

    async def close(self) -> None:
        """Closes the HTTP clients."""
        self.is_closed = True
        await self.http.close()
        await self.kube.close()


def configure_settings(settings: kopf.OperatorSettings, options: OperatorOptions) -> None:
    """kopf settings: handler progress in annotations (the status schema is strict), events from
    INFO, clusterwide peering under the given name (or standalone), no CRD watching."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration")
    # kopf holds deletion only until the per-resource daemon has stopped.
    settings.persistence.finalizer = f"{PREFIX}/operator"
    settings.posting.level = logging.INFO
    # The CRD is installed with the chart before the operator starts: no need to watch CRDs
    # (which would need a cluster-wide permission).
    settings.scanning.disabled = True
    settings.peering.standalone = options.peering_name is None
    settings.peering.clusterwide = True
    if options.peering_name is not None:
        settings.peering.name = options.peering_name
        settings.peering.mandatory = True
        settings.peering.priority = options.priority
