"""RouterError -> gRPC status, HTTP status and OpenAI error body."""

from __future__ import annotations

import grpc
import pytest

from router.errors import ErrorCode, RouterError, from_grpc_code


@pytest.mark.parametrize("code, grpc_code, http_status", [
    (ErrorCode.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (ErrorCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND, 404),
    (ErrorCode.UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED, 401),
    (ErrorCode.PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED, 403),
    (ErrorCode.RESOURCE_EXHAUSTED, grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (ErrorCode.DEADLINE_EXCEEDED, grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    (ErrorCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, 503),
    (ErrorCode.INTERNAL, grpc.StatusCode.INTERNAL, 500),
])
def test_codes_map_to_grpc_and_http(code, grpc_code, http_status):
    assert code.grpc_code == grpc_code and code.http_status == http_status
    assert from_grpc_code(grpc_code) is code


def test_retry_hint_becomes_metadata_and_header():
    error = RouterError(ErrorCode.RESOURCE_EXHAUSTED, "slow down", retry_after_s=1.2)
    assert error.grpc_trailing_metadata() == (("retry-after-ms", "1200"),)
    assert error.http_headers() == {"Retry-After": "2"}
    assert error.openai_body() == {"error": {"message": "slow down", "type": "rate_limit_error",
                                             "param": None, "code": "resource_exhausted"}}
    assert RouterError(ErrorCode.UNAVAILABLE, "x", retry_after_s=3).http_headers() == {}
    with pytest.raises(ValueError):
        RouterError(ErrorCode.INTERNAL, "x", retry_after_s=-1)
