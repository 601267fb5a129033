"""The seam between the router's front doors (gRPC, HTTP) and the request orchestration behind them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from opentelemetry.context import Context

from router.auth import Tenant
from tandem.api.v1 import inference_pb2


class GenerationService(Protocol):
    """Serves generation requests for authenticated tenants.

    `generate` is an async generator: it raises RouterError before the first message or during
    the stream; the front door closes it (`aclose`) when the client goes away, which the
    implementation treats as cancellation.
    """

    def list_models(self) -> list[inference_pb2.ModelInfo]:
        """The models (tiers) this deployment serves."""
        ...

    def generate(self, request: inference_pb2.GenerateRequest, tenant: Tenant, *,
                 trace_context: Context | None = None,
                 on_planned: Callable[[int], None] | None = None,
                 ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        """Streams the responses of one request; the last message carries the usage.

        on_planned(num_tokens), when given, is called once the request is planned and before any
        worker is used, with the tokens it may consume (prompt plus every sample's budget); a
        RouterError it raises refuses the request.
        """
        ...
