"""Authentication of router -> worker gRPC calls with a shared token.

The router, prefill and decode processes read one token from a file (`--worker-token-file`, by
default $TANDEM_WORKER_TOKEN_FILE; on Kubernetes a Secret the operator creates). The router sends
it as `authorization: Bearer <token>` metadata on every call through a client interceptor; each
worker refuses every call to its worker API without it with UNAUTHENTICATED. Health checks and
reflection stay open: the kubelet's gRPC probes carry no metadata. Prometheus /metrics is a
separate HTTP port and stays unauthenticated (it carries load figures only, no request data).
"""

from __future__ import annotations

import argparse
import collections
import hmac
import logging
import os
import secrets
from pathlib import Path

import grpc
from grpc_health.v1 import health

from tandem.telemetry.metrics import default_metrics

log = logging.getLogger(__name__)

TOKEN_ENV = "TANDEM_WORKER_TOKEN_FILE"
METADATA_KEY = "authorization"
MIN_TOKEN_CHARS = 32
# Open to everyone: the kubelet probes health, and reflection only describes the API.
OPEN_SERVICES = frozenset({health.SERVICE_NAME, "grpc.reflection.v1alpha.ServerReflection",
                           "grpc.reflection.v1.ServerReflection"})


def add_worker_auth_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --worker-token-file and --insecure-no-worker-auth."""
    parser.add_argument("--worker-token-file", default=os.environ.get(TOKEN_ENV),
                        help=f"file holding the token that router -> worker calls carry (default: ${TOKEN_ENV})")
    parser.add_argument("--insecure-no-worker-auth", action="store_true",
                        help="run without a worker token: any caller may use the worker API")


def worker_token_from_args(args: argparse.Namespace) -> str | None:
    """The token from the flags; None only with --insecure-no-worker-auth; exits on misuse."""
    if args.worker_token_file and args.insecure_no_worker_auth:
        raise SystemExit("give --worker-token-file or --insecure-no-worker-auth, not both")
    if args.insecure_no_worker_auth:
        log.warning("worker calls run without authentication (--insecure-no-worker-auth): "
                    "any process that reaches a worker can reserve, read and cancel requests")
        return None
    if not args.worker_token_file:
        raise SystemExit(f"no worker token: give --worker-token-file PATH (or set ${TOKEN_ENV}); "
                         "--insecure-no-worker-auth turns authentication off")
    try:
        return read_token_file(args.worker_token_file)
    except (OSError, ValueError) as error:
        raise SystemExit(f"--worker-token-file: {error}") from None


def new_worker_token() -> str:
    """A fresh random token (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def write_token_file(path: str | Path) -> Path:
    """Writes a new token to a new file readable by its owner only; never overwrites one."""
    path = Path(path)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(new_worker_token() + "\n")
    return path


def read_token_file(path: str | Path) -> str:
    """The token in a file, without surrounding whitespace; ValueError if it is unfit."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist or is not a file")
    token = path.read_bytes().strip()
    if not token:
        raise ValueError(f"{path} is empty")
    if not all(0x21 <= byte <= 0x7E for byte in token):
        raise ValueError(f"{path}: a worker token must be printable ASCII without spaces")
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"{path}: a worker token needs at least {MIN_TOKEN_CHARS} characters, "
                         f"it has {len(token)}")
    return token.decode("ascii")


def bearer(token: str) -> tuple[str, str]:
    """The metadata entry that carries the token."""
    return METADATA_KEY, f"Bearer {token}"


class WorkerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call outside OPEN_SERVICES that lacks the token, with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._expected = bearer(token)[1].encode()

    async def intercept_service(self, continuation, handler_call_details):
        """Passes the call on when its service is open or it carries the token."""
        handler = await continuation(handler_call_details)
        service = handler_call_details.method.lstrip("/").rpartition("/")[0]
        if handler is None or service in OPEN_SERVICES:
            return handler
        presented = dict(handler_call_details.invocation_metadata or ()).get(METADATA_KEY)
        if presented is not None and hmac.compare_digest(presented.encode(), self._expected):
            return handler
        return _refusal(handler, handler_call_details.method, "missing" if presented is None else "wrong")


def _refusal(handler: grpc.RpcMethodHandler, method: str, reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape that counts, logs and aborts; the request is never parsed."""

    async def refuse(request, context: grpc.aio.ServicerContext) -> None:
        default_metrics().worker_auth_refused.labels(reason=reason).inc()
        log.warning("refused %.100s from %s: %s worker token", method, context.peer(), reason)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{reason} worker token")

    make = {(False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}
    return make[handler.request_streaming, handler.response_streaming](refuse)


def worker_token_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that add the token to every unary and server-streaming call of a grpc.aio channel.

    One per call kind: grpc.aio files an interceptor under the first kind it implements only.
    """
    return [_UnaryUnaryToken(token), _UnaryStreamToken(token)]


class _AsyncTokenInterceptor:
    def __init__(self, token: str) -> None:
        self._entry = bearer(token)

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return details._replace(metadata=(*(details.metadata or ()), self._entry))


class _UnaryUnaryToken(_AsyncTokenInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._with_token(client_call_details), request)


class _UnaryStreamToken(_AsyncTokenInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._with_token(client_call_details), request)


class _CallDetails(collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
        grpc.ClientCallDetails):
    """Blocking-API call details with the token added."""


class _BlockingTokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._entry = bearer(token)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def _with_token(self, details) -> _CallDetails:
        return _CallDetails(details.method, details.timeout, [*(details.metadata or ()), self._entry],
                            details.credentials, details.wait_for_ready, details.compression)


def authenticated_channel(address: str, token: str) -> grpc.Channel:
    """A blocking channel to a worker whose calls carry the token (tools, tests, benchmarks)."""
    return grpc.intercept_channel(grpc.insecure_channel(address), _BlockingTokenInterceptor(token))
