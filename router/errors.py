"""Router errors: one exception type with a code that maps to gRPC status and OpenAI-style HTTP errors."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import grpc

# Trailing metadata key carrying the retry hint of RESOURCE_EXHAUSTED (see inference.proto).
RETRY_AFTER_METADATA_KEY = "retry-after-ms"


@dataclass(slots=True, frozen=True)
class _CodeInfo:
    grpc_code: grpc.StatusCode
    http_status: int
    openai_type: str


class ErrorCode(enum.Enum):
    """What went wrong, independent of the transport that reports it."""

    INVALID_ARGUMENT = _CodeInfo(grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error")
    NOT_FOUND = _CodeInfo(grpc.StatusCode.NOT_FOUND, 404, "not_found_error")
    UNAUTHENTICATED = _CodeInfo(grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error")
    PERMISSION_DENIED = _CodeInfo(grpc.StatusCode.PERMISSION_DENIED, 403, "permission_error")
    RESOURCE_EXHAUSTED = _CodeInfo(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error")
    DEADLINE_EXCEEDED = _CodeInfo(grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout_error")
    UNAVAILABLE = _CodeInfo(grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable_error")
    INTERNAL = _CodeInfo(grpc.StatusCode.INTERNAL, 500, "internal_error")

    @property
    def grpc_code(self) -> grpc.StatusCode:
        """The gRPC status code for this error."""
        return self.value.grpc_code

    @property
    def http_status(self) -> int:
        """The HTTP status for this error."""
        return self.value.http_status

    @property
    def openai_type(self) -> str:
        """The OpenAI error `type` string for this error."""
        return self.value.openai_type


class RouterError(Exception):
    """A request failed for a reason the client should see (code, message, optional retry hint)."""

    def __init__(self, code: ErrorCode, message: str, retry_after_s: float | None = None,
                 param: str | None = None) -> None:
        if not isinstance(code, ErrorCode):
            raise TypeError(f"RouterError: code must be an ErrorCode, got {code!r}")
        if retry_after_s is not None and (not math.isfinite(retry_after_s) or retry_after_s < 0):
            raise ValueError(f"RouterError: retry_after_s must be a finite number >= 0, got {retry_after_s}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        # The request field at fault (OpenAI's `param`), when one is.
        self.param = param

    def __repr__(self) -> str:
        return f"RouterError({self.code.name}, {self.message!r}, retry_after_s={self.retry_after_s})"

    def grpc_trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """Trailing metadata to send with the gRPC status (the retry hint, when there is one)."""
        if self.code is ErrorCode.RESOURCE_EXHAUSTED and self.retry_after_s is not None:
            return ((RETRY_AFTER_METADATA_KEY, str(math.ceil(self.retry_after_s * 1000))),)
        return ()

    def http_headers(self) -> dict[str, str]:
        """HTTP headers to send with the error response (Retry-After in whole seconds, rounded up)."""
        if self.code is ErrorCode.RESOURCE_EXHAUSTED and self.retry_after_s is not None:
            return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}
        return {}

    def openai_body(self) -> dict:
        """The OpenAI-style error body: {"error": {"message", "type", "param", "code"}}."""
        return {"error": {"message": self.message, "type": self.code.openai_type,
                          "param": self.param, "code": self.code.name.lower()}}


def invalid_argument(param: str, message: str) -> RouterError:
    """An INVALID_ARGUMENT error that names the request field at fault."""
    return RouterError(ErrorCode.INVALID_ARGUMENT, f"{param}: {message}", param=param)


def from_grpc_code(code: grpc.StatusCode) -> ErrorCode:
    """The ErrorCode matching a gRPC status code (INTERNAL for codes without a match)."""
    for error_code in ErrorCode:
        if error_code.grpc_code == code:
            return error_code
    return ErrorCode.INTERNAL
