"""The check every worker applies to a request id it receives, before it touches any state.

Worker-side ids are made by the router (uuid4 hex, plus "~<n>" for a resumed attempt); anything
else is refused. The character set keeps ids safe in KV wire headers, log lines and metric labels,
and leaves '#' free for the decode worker's per-sample engine ids.
"""

from __future__ import annotations

import re

import grpc

from tandem.kv.wire import MAX_REQUEST_ID_NBYTES

ALLOWED_CHARACTERS = "A-Za-z0-9._:~-"
_VALID_ID = re.compile(f"[{ALLOWED_CHARACTERS}]{{1,{MAX_REQUEST_ID_NBYTES}}}")
# How much of a refused id an error message shows (an id may be megabytes long).
_SHOWN_CHARS = 40


def check_request_id(request_id: str, field: str = "request_id") -> str:
    """Returns request_id if it is 1..64 bytes of [A-Za-z0-9._:~-]; else raises ValueError naming field."""
    if isinstance(request_id, str) and _VALID_ID.fullmatch(request_id):
        return request_id
    shown = repr(request_id[:_SHOWN_CHARS]) + ("..." if len(request_id) > _SHOWN_CHARS else "")
    raise ValueError(f"{field} must be 1..{MAX_REQUEST_ID_NBYTES} characters of "
                     f"[{ALLOWED_CHARACTERS}], got {len(request_id)} characters: {shown}")


async def require_valid_request_id(context: grpc.aio.ServicerContext, request_id: str,
                                   field: str = "request_id") -> None:
    """Ends the RPC with INVALID_ARGUMENT unless request_id passes check_request_id."""
    try:
        check_request_id(request_id, field)
    except ValueError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
