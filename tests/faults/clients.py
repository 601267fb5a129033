"""Sends one request over gRPC, the OpenAI HTTP API (server-sent events) or a worker's API, and
records how it ended: an `Outcome`.

Statuses: "OK" (the stream ended with its usage), "CLIENT_CANCELLED" (the client closed it on
purpose), a gRPC status name (HTTP errors are mapped through the body's OpenAI `code`, which the
router sets to the gRPC name; HTTP 413 is "PAYLOAD_TOO_LARGE"), "NO_USAGE" (the stream ended
without its usage message), "HUNG" (nothing ended it by its deadline plus the margin), or
"HARNESS_ERROR" (the client itself failed; the message says why).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp
import grpc

from tandem.api.v1 import inference_pb2, inference_pb2_grpc, worker_pb2, worker_pb2_grpc
from tests.faults.request_body import RequestBody, WorkerCall

WORKER_CALL_TIMEOUT_S = 5.0
_HTTP_FINISH = {"stop": "STOP", "length": "LENGTH", "abort": "CANCELLED"}


@dataclass(slots=True)
class Outcome:
    """How one request ended, and what it returned."""

    index: int
    status: str = "HARNESS_ERROR"
    message: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    finish_reasons: dict[int, str] = field(default_factory=dict)
    token_ids: list[int] = field(default_factory=list)  # sample 0 (gRPC only)
    text: str = ""  # sample 0, thinking and answer in arrival order
    num_pieces: int = 0  # text pieces or token chunks seen, over all samples
    num_completion_tokens: int = 0  # from the usage message
    num_thinking_tokens: int = 0
    echoed_ids: set[str] = field(default_factory=set)

    @property
    def seconds(self) -> float:
        """How long the request took, as the client saw it."""
        return self.ended_at - self.started_at


class _ClientCancel(Exception):
    """The client closes the stream on purpose."""


async def send_grpc(channel: grpc.aio.Channel, body: RequestBody, outcome: Outcome, limit_s: float,
                    cancel_after_tokens: int | None, cancel_after_s: float | None) -> None:
    """Streams one Generate call into outcome."""
    stub = inference_pb2_grpc.InferenceStub(channel)
    call = stub.Generate(generate_request(body), metadata=(("authorization", f"Bearer {body.api_key}"),))
    try:
        async with _limit(limit_s, cancel_after_s):
            has_usage = False
            async for response in call:
                has_usage |= _add_grpc_response(outcome, response)
                if cancel_after_tokens is not None and len(outcome.token_ids) >= cancel_after_tokens:
                    raise _ClientCancel
            outcome.status = "OK" if has_usage else "NO_USAGE"
    except grpc.aio.AioRpcError as exc:
        outcome.status, outcome.message = exc.code().name, exc.details() or ""
    except (_ClientCancel, _CancelTime):
        call.cancel()
        outcome.status = "CLIENT_CANCELLED"
    except TimeoutError:
        call.cancel()
        outcome.status, outcome.message = "HUNG", f"no end within {limit_s:.0f}s"


def _add_grpc_response(outcome: Outcome, response: inference_pb2.GenerateResponse) -> bool:
    outcome.echoed_ids.add(response.request_id)
    if response.sample_index == 0:
        outcome.token_ids.extend(response.token_ids)
        outcome.text += response.text
    outcome.num_pieces += bool(response.token_ids)
    if response.finish_reason:
        outcome.finish_reasons[response.sample_index] = (
            inference_pb2.FinishReason.Name(response.finish_reason).removeprefix("FINISH_REASON_"))
    if response.HasField("usage"):
        outcome.num_completion_tokens = response.usage.completion_tokens
        outcome.num_thinking_tokens = response.usage.thinking_tokens
        return True
    return False


def generate_request(body: RequestBody) -> inference_pb2.GenerateRequest:
    """The body as a gRPC GenerateRequest (unset fields stay unset)."""
    request = inference_pb2.GenerateRequest(model=body.model, request_id=body.request_id)
    prompt = body.prompt
    if prompt.form == "tokens":
        request.tokens.token_ids.extend(prompt.token_ids)
    elif prompt.form == "chat":
        request.chat.messages.extend(inference_pb2.ChatMessage(role=r, content=c) for r, c in prompt.messages)
    else:
        request.prompt = prompt.text
    sampling, budget = request.sampling, request.budget
    sampling.n = body.num_samples
    for name in ("temperature", "seed", "top_p"):
        if getattr(body, name) is not None:
            setattr(sampling, name, getattr(body, name))
    for name, value in (("max_tokens", body.max_tokens), ("deadline_seconds", body.deadline_s),
                        ("max_thinking_tokens", body.max_thinking_tokens), ("thinking", body.thinking)):
        if value is not None:
            setattr(budget, name, value)
    return request


async def send_http(session: aiohttp.ClientSession, base_url: str, body: RequestBody, outcome: Outcome,
                    limit_s: float, cancel_after_tokens: int | None, cancel_after_s: float | None) -> None:
    """Streams one OpenAI request (chat for chat prompts, completions otherwise) into outcome."""
    is_chat = body.prompt.form == "chat"
    url = f"{base_url}/{'chat/completions' if is_chat else 'completions'}"
    headers = {"Authorization": f"Bearer {body.api_key}", "Content-Type": "application/json"}
    try:
        async with _limit(limit_s, cancel_after_s):
            async with session.post(url, data=json.dumps(openai_body(body)), headers=headers) as response:
                if response.status != 200:
                    _set_http_error(outcome, response.status, await response.read())
                    return
                await _read_events(response, outcome, cancel_after_tokens)
    except (_ClientCancel, _CancelTime):
        outcome.status = "CLIENT_CANCELLED"
    except TimeoutError:
        outcome.status, outcome.message = "HUNG", f"no end within {limit_s:.0f}s"
    except aiohttp.ClientError as exc:
        outcome.status, outcome.message = "HARNESS_ERROR", f"HTTP client: {exc!r}"


async def _read_events(response: aiohttp.ClientResponse, outcome: Outcome,
                       cancel_after_tokens: int | None) -> None:
    has_usage = is_done = False
    async for raw_line in response.content:
        line = raw_line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[len(b"data: "):]
        if data == b"[DONE]":
            is_done = True
            break
        event = json.loads(data)
        if "error" in event:
            outcome.status = str(event["error"].get("code") or "unknown").upper()
            outcome.message = str(event["error"].get("message", ""))
            return
        has_usage |= _add_http_event(outcome, event)
        if cancel_after_tokens is not None and outcome.num_pieces >= cancel_after_tokens:
            response.close()
            raise _ClientCancel
    outcome.status = "OK" if has_usage and is_done else "NO_USAGE"
    if not is_done:
        outcome.message = "the event stream ended without [DONE]"


def _add_http_event(outcome: Outcome, event: dict) -> bool:
    response_id = str(event.get("id", ""))
    outcome.echoed_ids.add(response_id.split("-", 1)[1] if "-" in response_id else response_id)
    for choice in event.get("choices", []):
        delta = choice.get("delta", choice)
        text = (delta.get("reasoning_content") or "") + (delta.get("content") or delta.get("text") or "")
        if choice["index"] == 0:
            outcome.text += text
        outcome.num_pieces += bool(text)
        if choice.get("finish_reason"):
            reason = choice.get("tandem_finish_reason") or choice["finish_reason"]
            outcome.finish_reasons[choice["index"]] = _HTTP_FINISH.get(reason, reason.upper())
    usage = event.get("usage")
    if usage:
        outcome.num_completion_tokens = usage["completion_tokens"]
        details = usage.get("completion_tokens_details") or {}
        outcome.num_thinking_tokens = details.get("reasoning_tokens", 0)
        return True
    return False


def _set_http_error(outcome: Outcome, status: int, raw: bytes) -> None:
    try:
        error = json.loads(raw)["error"]
        code, message = str(error.get("code") or ""), str(error.get("message") or "")
    except (ValueError, KeyError, TypeError):
        code, message = "", raw[:200].decode("utf-8", "replace")
    outcome.status = "PAYLOAD_TOO_LARGE" if status == 413 else (code.upper() or f"HTTP_{status}")
    outcome.message = f"HTTP {status}: {message}"


def openai_body(body: RequestBody) -> dict:
    """The body as an OpenAI request with Tandem's extensions (NaN and infinity kept as JSON allows)."""
    prompt = body.prompt
    request: dict = {"model": body.model, "stream": True, "stream_options": {"include_usage": True},
                     "n": body.num_samples}
    if prompt.form == "chat":
        request["messages"] = [{"role": r, "content": c} for r, c in prompt.messages]
    else:
        request["prompt"] = list(prompt.token_ids) if prompt.form == "tokens" else prompt.text
    for name, value in (("max_tokens", body.max_tokens), ("temperature", body.temperature),
                        ("seed", body.seed), ("top_p", body.top_p),
                        ("deadline_seconds", body.deadline_s), ("request_id", body.request_id or None),
                        ("max_thinking_tokens", body.max_thinking_tokens), ("thinking", body.thinking)):
        if value is not None:
            request[name] = value
    return request


async def send_worker(channel: grpc.aio.Channel, call: WorkerCall, outcome: Outcome) -> None:
    """Calls a worker directly, without the worker token."""
    is_decode = call.target.startswith("decode")
    stub = (worker_pb2_grpc.DecodeWorkerStub if is_decode else worker_pb2_grpc.PrefillWorkerStub)(channel)
    try:
        if call.method == "Reserve":
            await stub.Reserve(worker_pb2.ReserveRequest(
                request_id=call.request_id, prompt_token_ids=call.prompt_token_ids,
                lease_seconds=call.lease_seconds), timeout=WORKER_CALL_TIMEOUT_S)
        elif call.method == "Cancel":
            await stub.Cancel(worker_pb2.CancelRequest(request_id=call.request_id, reason="probe"),
                              timeout=WORKER_CALL_TIMEOUT_S)
        else:
            await stub.GetLoad(worker_pb2.GetLoadRequest(), timeout=WORKER_CALL_TIMEOUT_S)
        outcome.status, outcome.message = "OK", f"{call.method} without a worker token was served"
    except grpc.aio.AioRpcError as exc:
        outcome.status, outcome.message = exc.code().name, exc.details() or ""


class _CancelTime(Exception):
    """The client's cancel time came."""


class _limit:
    """asyncio.timeout(limit_s) that raises _CancelTime instead when the client cancels first."""

    def __init__(self, limit_s: float, cancel_after_s: float | None) -> None:
        self.is_cancel = cancel_after_s is not None and cancel_after_s < limit_s
        self.timeout = asyncio.timeout(cancel_after_s if self.is_cancel else limit_s)

    async def __aenter__(self) -> None:
        await self.timeout.__aenter__()

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        try:
            await self.timeout.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            if self.is_cancel:
                raise _CancelTime from None
            raise
        return False


def now() -> float:
    """The clock outcomes and fault windows share."""
    return time.monotonic()

