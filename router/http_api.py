"""OpenAI-compatible HTTP front door (aiohttp): /v1/models, /v1/completions, /v1/chat/completions.

Streams are server-sent events (`data: {chunk}` ... `data: [DONE]`). Errors are OpenAI error
bodies with the status of their ErrorCode; an error after the stream has started is sent as one
`data: {"error": ...}` event. The app is served with handler cancellation, so a client that goes
away cancels its handler and the service's stream is closed at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from opentelemetry import context as otel_context

from router.auth import Authenticator, Tenant, api_key_from_pairs
from router.errors import ErrorCode, RouterError, invalid_argument
from router.openai_render import OpenAIRenderer, routing_headers
from router.openai_schema import Endpoint, parse_request
from router.request_plan import MAX_REQUEST_BYTES
from router.service import GenerationService
from router.tls import TlsConfig
from tandem.telemetry.metrics import Metrics
from tandem.telemetry.tracing import server_span

log = logging.getLogger(__name__)

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no"}


class OpenAIHttpApi:
    """Route handlers over a GenerationService."""

    def __init__(self, service: GenerationService, authenticator: Authenticator,
                 readiness: Callable[[], bool] | None = None) -> None:
        self.service = service
        self.authenticator = authenticator
        self.readiness = readiness or (lambda: bool(service.list_models()))

    def _tenant(self, request: web.Request) -> Tenant:
        return self.authenticator.authenticate(api_key_from_pairs(request.headers.items()))

    async def list_models(self, request: web.Request) -> web.Response:
        """GET /v1/models."""
        self._tenant(request)
        return web.json_response({"object": "list",
                                  "data": [_model_body(m) for m in self.service.list_models()]})

    async def get_model(self, request: web.Request) -> web.Response:
        """GET /v1/models/{model_id}."""
        self._tenant(request)
        model_id = request.match_info["model_id"]
        for model in self.service.list_models():
            if model.id == model_id:
                return web.json_response(_model_body(model))
        raise RouterError(ErrorCode.NOT_FOUND, f"model {model_id!r} does not exist", param="model")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/completions."""
        return await self._generate(request, Endpoint.COMPLETIONS)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions."""
        return await self._generate(request, Endpoint.CHAT)

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: the process serves HTTP."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness: the service can take requests."""
        is_ready = self.readiness()
        return web.json_response({"status": "ready" if is_ready else "not ready"},
                                 status=200 if is_ready else 503)

    async def _generate(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        tenant = self._tenant(request)
        parsed = parse_request(endpoint, await _read_json(request))
        with server_span(f"POST {request.path}", request.headers.items(), tenant=tenant.name,
                         stream=parsed.is_stream):
            stream = self.service.generate(parsed.generate, tenant, trace_context=otel_context.get_current())
            renderer = OpenAIRenderer(parsed, created=int(time.time()))
            async with contextlib.aclosing(stream):
                if parsed.is_stream:
                    return await _send_events(request, stream, renderer)
                async for response in stream:
                    renderer.add(response)
                return web.json_response(renderer.final_body(),
                                         headers=routing_headers(renderer.routing))


async def _send_events(request: web.Request, stream, renderer: OpenAIRenderer) -> web.StreamResponse:
    # The first message decides the status (errors before it keep their own HTTP status) and the
    # routing headers: the tier is chosen before it, and it carries the routing information.
    first = await anext(stream, None)
    first_chunk = renderer.add(first) if first is not None else None
    response = web.StreamResponse(headers={**_SSE_HEADERS, **routing_headers(renderer.routing)})
    await response.prepare(request)
    try:
        await _send(response, first_chunk)
        async for message in stream:
            await _send(response, renderer.add(message))
        if renderer.parsed.include_usage:
            await _send(response, renderer.usage_chunk())
        await response.write(b"data: [DONE]\n\n")
    except RouterError as exc:
        await _send(response, exc.openai_body())
    except ConnectionResetError:
        log.info("client went away during %s; closing its stream", request.path)
    except Exception:
        # The status line is sent: the error can only travel as an event.
        log.exception("unexpected error while streaming %s", request.path)
        await _send(response, RouterError(ErrorCode.INTERNAL, "internal error; see the router's log").openai_body())
    return response


async def _send(response: web.StreamResponse, chunk: dict | None) -> None:
    if chunk is not None:
        await response.write(b"data: " + json.dumps(chunk).encode("utf-8") + b"\n\n")


async def _read_json(request: web.Request) -> object:
    raw = await request.read()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid_argument("body", f"malformed JSON: {exc}") from None


def _model_body(model) -> dict:
    return {"id": model.id, "object": "model", "created": 0, "owned_by": "tandem",
            "max_context": model.max_context, "supports_thinking": model.supports_thinking,
            "pricing": {"prompt_per_1k": model.price_per_1k_prompt_tokens,
                        "completion_per_1k": model.price_per_1k_completion_tokens}}


def _error_response(error: RouterError) -> web.Response:
    return web.json_response(error.openai_body(), status=error.code.http_status, headers=error.http_headers())


@web.middleware
async def _errors_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RouterError as exc:
        return _error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = {"error": {"message": exc.text or exc.reason, "param": None, "type": "invalid_request_error",
                          "code": exc.reason.lower().replace(" ", "_")}}
        return web.json_response(body, status=exc.status)
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return _error_response(RouterError(ErrorCode.INTERNAL, "internal error; see the router's log"))


def build_http_app(service: GenerationService, authenticator: Authenticator, *,
                   readiness: Callable[[], bool] | None = None, metrics: Metrics | None = None,
                   max_body_bytes: int = MAX_REQUEST_BYTES) -> web.Application:
    """The aiohttp app; pass `metrics` to also serve /metrics on this port.

    A body over max_body_bytes is refused with 413 naming the limit, before it is read whole.
    """
    api = OpenAIHttpApi(service, authenticator, readiness)
    app = web.Application(middlewares=[_errors_middleware], client_max_size=max_body_bytes)
    app.router.add_get("/v1/models", api.list_models)
    app.router.add_get("/v1/models/{model_id}", api.get_model)
    app.router.add_post("/v1/completions", api.completions)
    app.router.add_post("/v1/chat/completions", api.chat_completions)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    if metrics is not None:
        async def serve_metrics(request: web.Request) -> web.Response:
            """GET /metrics: the Prometheus exposition."""
            body, content_type = metrics.exposition()
            return web.Response(body=body, headers={"Content-Type": content_type})
        app.router.add_get("/metrics", serve_metrics)
    return app


@dataclass(slots=True)
class HttpServer:
    """A running HTTP server: its bound port and how to stop it."""

    runner: web.AppRunner
    port: int

    async def close(self) -> None:
        """Stops accepting and closes open connections (their handlers are cancelled)."""
        await self.runner.cleanup()


async def start_http_server(app: web.Application, host: str = "0.0.0.0", port: int = 0,
                            tls: TlsConfig | None = None) -> HttpServer:
    """Serves the app on host:port (port 0 picks a free one), over TLS when configured."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls.ssl_context() if tls else None)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return HttpServer(runner, int(runner.addresses[0][1]))
